# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trace flows through the compiled policy on the controller; see plugins/modules/trace.py."""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import format_matrix, format_table, trace
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction

ARGUMENT_SPEC = {
    "src": {"type": "str", "required": True},
    "dst": {"type": "str", "required": True},
    "port": {"type": "str", "required": True},
    "policy": {"type": "raw"},
}


class ActionModule(FleetAction):
    NAME = "trace"
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validated_args()
        try:
            fleet = self.compile_fleet(task_vars, args["policy"])
            results = trace(fleet, args["src"], args["dst"], args["port"])
        except MsegError as exc:
            return self.failed(result, "mseg.fleet.trace:", exc)
        data = [item.to_data() for item in results]
        result.update(
            changed=False,
            policy_digest=fleet.policy.digest,
            results=data,
            lines=format_table(results, fleet),
            matrix=format_matrix(results, args["port"]),
            allowed=sum(1 for item in data if item["allowed"]),
            denied=sum(1 for item in data if not item["allowed"]),
        )
        return result
