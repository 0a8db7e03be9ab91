#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done on the controller by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: observe_report
short_description: Summarise what enforce would drop, from the agents' drop logs
version_added: 0.1.0
description:
  - In observe mode every packet that enforce would drop is logged as C([MSEG-AUDIT] ID=<id>) and accepted. The
    agent on each host reads those records from the ruleset's NFLOG group (never from the kernel log, which any
    local user can write to) and writes them to its runtime log, with a heartbeat while it collects. This module
    reads those runtime log lines (collected from the hosts by the C(mseg.fleet.observe_report) playbook),
    attributes each address to its inventory host and labels, and summarises the would-be drops per rule id and
    per pair of source labels, destination labels and port.
  - The heartbeats tell "no events" from "nobody was collecting"; without any, the summary says so.
  - Runs on the controller. With O(dest) it writes C(observe-report.json) and C(observe-report.csv) there.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  lines:
    description: Lines of the agents' runtime logs (C(/var/log/mseg-agent/runtime.log)); other lines are ignored,
      and so is any line that is not exactly what the drop log writes.
    type: list
    elements: str
    required: true
  kinds:
    description: Which log lines to count. V(AUDIT) (observe mode), V(DROP) (enforce), V(LOG) (log rules).
    type: list
    elements: str
    choices: [AUDIT, DROP, LOG]
    default: [AUDIT]
  dest:
    description:
      - Directory on the controller to write C(observe-report.json) and C(observe-report.csv) into, created 0700.
        An existing one must belong to the user running Ansible and be writable by no one else (as O(mseg.fleet.compile#module:render_dir)).
    type: path
extends_documentation_fragment:
  - mseg.fleet.controller_side
attributes:
  check_mode:
    description: Summarises in check mode too, and reports whether the files in O(dest) would change without
      writing them.
seealso:
  - module: mseg.fleet.trace
"""

EXAMPLES = r"""
- name: Summarise the audit lines collected from the hosts
  mseg.fleet.observe_report:
    lines: "{{ audit_lines }}"
    dest: ~/.mseg/observe
  run_once: true
"""

RETURN = r"""
summary:
  description: The would-be drops.
  returned: success
  type: dict
  contains:
    packets:
      description: Logged packets counted.
      type: int
    flows:
      description: Distinct (source, destination, port) flows among them.
      type: int
    rules:
      description: Per rule id (0 is the default), its name, packets and flows, most packets first.
      type: list
      elements: dict
    pairs:
      description: Per source labels, destination labels, port and rule, the packets and the hosts involved.
      type: list
      elements: dict
    collecting:
      description: Per host whose drop log was collecting, its first and last heartbeat in the input (C(from),
        C(to)) and how many; empty when nobody was collecting.
      type: list
      elements: dict
lines:
  description: The summary as human-readable lines.
  returned: success
  type: list
  elements: str
files:
  description: The report files written into O(dest).
  returned: success
  type: list
  elements: str
"""
