# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trace flows through the compiled policy on the controller; the options are documented in
plugins/modules/trace.py."""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import format_matrix, format_table, trace
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction


class ActionModule(FleetAction):
    NAME = "trace"

    def act(self, fleet, args):
        results = trace(fleet, args["src"], args["dst"], args["port"])
        data = [item.to_data() for item in results]
        return dict(
            changed=False,
            policy_digest=fleet.policy.digest,
            results=data,
            lines=format_table(results, fleet),
            matrix=format_matrix(results, args["port"]),
            allowed=sum(1 for item in data if item["allowed"]),
            denied=sum(1 for item in data if not item["allowed"]),
        )
