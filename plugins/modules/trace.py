#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done on the controller by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: trace
short_description: Tell whether a flow is allowed by the fleet policy, and which rule decides
version_added: 0.1.0
description:
  - Compiles the fleet policy on the controller, as M(mseg.fleet.compile) does, and evaluates every pair of
    O(src) and O(dst) endpoints for one protocol and port, for each address family both ends have.
  - The evaluation walks the same compiled plans the rulesets are rendered from, in the same order (management,
    system rules, log, deny, allow, default), so it cannot disagree with the rulesets. It touches no host.
  - For each pair it returns allowed or denied, where the decision is made (the egress of the source or the
    ingress of the destination), the deciding rule id and name or the default, and each side's mode. In
    observe mode a flow that enforce would drop is reported as allowed and audited.
  - The controller's own SSH address (added to the management entries at apply time) is not part of the trace.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  src:
    description:
      - The sending side. An inventory hostname, a group name, a tag expression such as C(role=web) or
        C(role=web,env=prod) (every label must match), C(all) for every host, or an IP address (outside the fleet, or a host's address).
    type: str
    required: true
  dst:
    description:
      - The receiving side, in the same forms as O(src).
    type: str
    required: true
  port:
    description:
      - One protocol and destination port such as C(tcp/5432) or C(udp/53), C(icmp), or an IP protocol such as
        C(vrrp) or C(proto/112) (docs/policy.md).
    type: str
    required: true
extends_documentation_fragment:
  - mseg.fleet.controller_side
attributes:
  check_mode:
    description: Trace never changes anything.
seealso:
  - module: mseg.fleet.compile
"""

EXAMPLES = r"""
- name: Would the web servers reach db-01 on PostgreSQL?
  mseg.fleet.trace:
    src: role=web
    dst: db-01
    port: tcp/5432
  run_once: true
  register: mseg_trace

- name: Show the answer
  ansible.builtin.debug:
    var: mseg_trace.lines
"""

RETURN = r"""
results:
  description:
    - One entry per traced pair and address family.
    - Each side's C(limited_by) names the system connection limits a new connection of this flow counts against on
      that host, such as C(system limit controller.connlimit (64 connections per source)); beyond them enforce
      drops it, whatever the verdict. It is empty for most flows.
  returned: success
  type: list
  elements: dict
  sample:
    - src: web-01
      dst: db-01
      port: tcp/5432
      family: ipv4
      src_address: 10.0.0.1
      dst_address: 10.0.0.3
      allowed: false
      decided_at: egress of web-01
      decided_by: rule 9 (web-no-db)
      rule: 9
      egress: {host: web-01, accepted: false, decided_by: rule 9 (web-no-db), rule: 9, audited: false, logged: [],
               limited_by: []}
      ingress: {host: db-01, accepted: false, decided_by: default, rule: null, audited: false, logged: [],
                limited_by: []}
lines:
  description: The results as aligned, human-readable lines.
  returned: success
  type: list
  elements: str
matrix:
  description:
    - The results as a source x destination grid (one row per source, columns numbered and listed below the grid).
    - A cell reads C(+ID) allowed by rule ID, C(+def) allowed by the default, C(+mgt) by a management entry,
      C(+sys) by a system rule (C(decided_by) names it, e.g. C(system rule controller.vrrp)), C(+byp) by bypass
      mode, C(xID) denied by rule ID, C(x) denied by the default, C(~ID) or C(~) allowed only
      because the deciding host observes (enforce would drop it), and C(.) a host to itself.
  returned: success
  type: list
  elements: str
allowed:
  description: How many traced pairs are allowed.
  returned: success
  type: int
denied:
  description: How many traced pairs are denied.
  returned: success
  type: int
policy_digest:
  description: SHA-256 of the validated policy the trace evaluated.
  returned: success
  type: str
problems:
  description: Every problem found in the policy, the inventory or the trace arguments.
  returned: failure
  type: list
  elements: str
"""
