# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile the fleet policy once on the controller; the options are documented in plugins/modules/compile.py."""

from __future__ import annotations

import json
import os

from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import RENDERED_SUFFIX
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import tag_value
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction


class ActionModule(FleetAction):
    NAME = "compile"
    INVALID = "mseg.fleet: the policy or inventory is invalid; nothing was rendered and no host was touched."

    def act(self, fleet, args):
        names = self._targets(fleet, args["hosts"], args["tags"])
        for warning in fleet.warnings:
            self._display.warning("mseg.fleet: %s" % warning)
        rulesets = {}
        summary = {}
        for name in names:
            text, stats = render_plan(fleet.plans[name])
            rulesets[name] = text
            if args["return_summary"]:
                plan = fleet.plans[name]
                summary[name] = dict(stats, mode=plan.mode, ingress_rules=len(plan.ingress),
                                     egress_rules=len(plan.egress),
                                     tags={k: sorted(v) for k, v in sorted(plan.host.tags.items())})
        changed = False
        files = []
        if args["render_dir"]:
            texts = {name + RENDERED_SUFFIX: body for name, body in rulesets.items()}
            texts["plan.json"] = json.dumps(fleet.to_data(names), indent=1, sort_keys=True) + "\n"
            changed, files = self.write_files(args["render_dir"], texts, "render_dir",
                                              "choose a writable directory with -e mseg_render_dir=DIR")
        result = dict(changed=changed, policy_digest=fleet.policy.digest, hosts=len(names),
                      warnings_list=fleet.warnings, files=files)
        if args["return_summary"]:
            result["summary"] = summary
        if args["render_dir"]:
            result["render_dir"] = os.path.abspath(args["render_dir"])
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
