# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Summarise the would-be drops of observe mode; see plugins/modules/observe_report.py."""

from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible_collections.mseg.fleet.plugins.action.compile import compile_from_task, write_if_changed
from ansible_collections.mseg.fleet.plugins.module_utils.audit import format_summary, summarise, to_csv
from ansible_collections.mseg.fleet.plugins.module_utils.errors import MsegError

ARGUMENT_SPEC = {
    "lines": {"type": "list", "elements": "str", "required": True},
    "kinds": {"type": "list", "elements": "str", "default": ["AUDIT"], "choices": ["AUDIT", "DROP", "LOG"]},
    "dest": {"type": "path"},
    "policy": {"type": "raw"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        validation = ArgumentSpecValidator(ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            raise AnsibleActionFail("mseg.fleet.observe_report: %s" % "; ".join(validation.error_messages))
        args = validation.validated_parameters
        policy = args["policy"] if args["policy"] is not None else task_vars.get("mseg_policy")
        try:
            fleet = compile_from_task(self, task_vars, self._templar.template(policy))
        except MsegError as exc:
            result.update(failed=True, msg="mseg.fleet.observe_report: %s" % exc, problems=exc.messages)
            return result
        summary = summarise(fleet, args["lines"], tuple(args["kinds"]))
        changed = False
        files = []
        if args["dest"] and not self._task.check_mode:
            try:
                os.makedirs(args["dest"], mode=0o700, exist_ok=True)
                for name, text in (("observe-report.json", json.dumps(summary, indent=1, sort_keys=True) + "\n"),
                                   ("observe-report.csv", to_csv(summary))):
                    path = os.path.join(args["dest"], name)
                    changed = write_if_changed(path, text) or changed
                    files.append(path)
            except (IOError, OSError) as exc:
                raise AnsibleActionFail("mseg.fleet.observe_report: cannot write to %s: %s"
                                        % (args["dest"], exc.strerror or exc))
        result.update(changed=changed, summary=summary, lines=format_summary(summary), files=files)
        return result
