# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Summarise the would-be drops of observe mode; see plugins/modules/observe_report.py."""

from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible_collections.mseg.fleet.plugins.module_utils.compile.observe import format_summary, summarise, to_csv
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction, write_if_changed

ARGUMENT_SPEC = {
    "lines": {"type": "list", "elements": "str", "required": True},
    "kinds": {"type": "list", "elements": "str", "default": ["AUDIT"], "choices": list(contract.LOG_KINDS)},
    "dest": {"type": "path"},
    "policy": {"type": "raw"},
}


class ActionModule(FleetAction):
    NAME = "observe_report"
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validated_args()
        try:
            fleet = self.compile_fleet(task_vars, args["policy"])
        except MsegError as exc:
            return self.failed(result, "mseg.fleet.observe_report:", exc)
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
