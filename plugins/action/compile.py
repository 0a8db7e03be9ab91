# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile the fleet policy once on the controller; see the documentation stub in plugins/modules/compile.py."""

from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import tag_value
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction, write_if_changed

ARGUMENT_SPEC = {
    "policy": {"type": "raw"},
    "hosts": {"type": "list", "elements": "str"},
    "tags": {"type": "dict", "default": {}},
    "render_dir": {"type": "path"},
    "return_rulesets": {"type": "bool", "default": False},
    "other_modes": {"type": "list", "elements": "str", "default": [], "choices": ["observe", "enforce"]},
}


class ActionModule(FleetAction):
    NAME = "compile"
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validated_args()
        try:
            fleet = self.compile_fleet(task_vars, args["policy"])
            names = self._targets(fleet, args["hosts"], args["tags"])
        except MsegError as exc:
            return self.failed(result, "mseg.fleet: the policy or inventory is invalid; nothing was rendered and "
                               "no host was touched.", exc)
        for warning in fleet.warnings:
            self._display.warning("mseg.fleet: %s" % warning)
        rulesets = {}
        summary = {}
        for name in names:
            text, stats = render_plan(fleet.plans[name])
            rulesets[name] = text
            plan = fleet.plans[name]
            summary[name] = dict(stats, mode=plan.mode, ingress_rules=len(plan.ingress), egress_rules=len(plan.egress),
                                 tags={k: sorted(v) for k, v in sorted(plan.host.tags.items())})
        changed = False
        files = []
        if args["render_dir"]:
            changed = self._write(args["render_dir"], rulesets, fleet.to_data(names), files)
        result.update(changed=changed, policy_digest=fleet.policy.digest, hosts=len(names), summary=summary,
                      warnings_list=fleet.warnings, files=files)
        if args["return_rulesets"]:
            result["rulesets"] = rulesets
        if args["other_modes"]:
            result["mode_rulesets"] = {
                name: {mode: render_plan(fleet.plans[name]._replace(mode=mode))[0] for mode in args["other_modes"]}
                for name in names}
        return result

    @staticmethod
    def _targets(fleet, wanted, tags):
        names = sorted(fleet.plans) if wanted is None else sorted(set(wanted))
        unknown = sorted(set(names) - set(fleet.plans))
        if unknown:
            raise MsegError("hosts: %s not in the inventory; check the hosts pattern" % ", ".join(unknown))
        wanted_tags = {}
        for key, value in tags.items():
            values = {tag_value(v) for v in (value if isinstance(value, list) else [value])}
            if None in values:
                raise MsegError("tags.%s: %r is not a string or number, or a list of them" % (key, value))
            wanted_tags[key] = values
        return [n for n in names if all(fleet.hosts[n].tags.get(k, frozenset()) & v for k, v in wanted_tags.items())]

    def _write(self, directory, rulesets, plan_data, files):
        text = {"%s.nft" % name: body for name, body in rulesets.items()}
        text["plan.json"] = json.dumps(plan_data, indent=1, sort_keys=True) + "\n"
        if self._task.check_mode:
            return any(not os.path.exists(os.path.join(directory, f)) or
                       open(os.path.join(directory, f), encoding="utf-8").read() != body
                       for f, body in text.items())
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            changed = False
            for filename in sorted(text):
                path = os.path.join(directory, filename)
                changed = write_if_changed(path, text[filename]) or changed
                files.append(path)
        except (IOError, OSError) as exc:
            raise AnsibleActionFail("mseg.fleet.compile: cannot write to render_dir %s: %s; choose a writable "
                                    "directory with -e mseg_render_dir=DIR" % (directory, exc.strerror or exc))
        return changed
