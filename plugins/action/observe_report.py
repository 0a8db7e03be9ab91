# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Summarise the would-be drops of observe mode; the options are documented in plugins/modules/observe_report.py."""

from __future__ import annotations

import json

from ansible_collections.mseg.fleet.plugins.module_utils.compile.observe import format_summary, summarise, to_csv
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction


class ActionModule(FleetAction):
    NAME = "observe_report"

    def act(self, fleet, args):
        summary = summarise(fleet, args["lines"], tuple(args["kinds"]))
        changed = False
        files = []
        if args["dest"]:
            changed, files = self.write_files(args["dest"], {
                "observe-report.json": json.dumps(summary, indent=1, sort_keys=True) + "\n",
                "observe-report.csv": to_csv(summary)}, "dest")
        return dict(changed=changed, summary=summary, lines=format_summary(summary), files=files)
