#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done on the controller by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compile
short_description: Compile the fleet policy into one nftables ruleset per host
version_added: 0.1.0
description:
  - Validates C(mseg_policy) and the inventory contract (C(mseg_tags), C(mseg_addresses), C(mseg_mode),
    C(mseg_management)) for every host of the inventory, then compiles a plan per host and renders it as a
    complete C(nft -f) file that replaces table C(inet mseg) atomically.
  - Runs on the controller and touches no host. Run it once per play with C(run_once=true); it compiles the whole
    inventory in one step, so the cost is one task execution whatever the number of hosts.
  - C(mseg_tags) of the groups a host belongs to are united per label (a host in two groups carries the labels of
    both); the host's own C(mseg_tags) replace a label's values.
  - Every problem in the policy or inventory is reported at once, naming the rule id (or index) and the field;
    nothing is rendered when there is any problem. A selector that selects no host is a warning.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  hosts:
    description:
      - Inventory hostnames to render. The whole inventory is always compiled, since rules refer to hosts outside
        the play; this only limits what is returned and written.
      - Defaults to every host in the inventory.
    type: list
    elements: str
  tags:
    description:
      - Of the hosts in O(hosts), render only those that carry every one of these labels; a list value means any
        of its values, as in a policy selector; for example C(zone) set to C(grid-ops).
    type: dict
    default: {}
  render_dir:
    description:
      - When set, write C(<inventory_hostname>.nft) for every rendered host and C(plan.json) (the compiled plans)
        into this directory on the controller. Files are written atomically with mode 0600 and only when their
        content changes. The directory is created 0700; an existing one must belong to the user running Ansible,
        be writable by no one else, and sit under no world-writable directory without the sticky bit (so not a
        name another user could create first in /tmp).
    type: path
  return_rulesets:
    description:
      - Return the rendered rulesets in C(rulesets), keyed by inventory hostname.
      - The result then grows with hosts x rules, and Ansible copies, serialises and keeps it for every host of the
        play; at thousands of hosts prefer O(render_dir) and read each host's file (as the rollout playbook does).
    type: bool
    default: false
  return_summary:
    description:
      - Return RV(summary), a few lines per rendered host. V(false) keeps the result the same size whatever the
        number of hosts; C(mseg.fleet.render) sets it, its files are the result.
    type: bool
    default: true
  other_modes:
    description:
      - Also render every host's ruleset as it would be in these modes, whatever the host's own mode, and return
        them in RV(mode_rulesets). Signed bundles carry them so that the agent on a host can switch mode locally
        (C(mseg mode observe)) without reaching a controller.
    type: list
    elements: str
    choices: [observe, enforce]
    default: []
extends_documentation_fragment:
  - mseg.fleet.controller_side
attributes:
  check_mode:
    description: Reports whether files in O(render_dir) would change without writing them.
notes:
  - Requires the Python library C(netaddr) on the controller.
seealso:
  - module: mseg.fleet.trace
"""

EXAMPLES = r"""
- name: Render every host's ruleset into a directory
  mseg.fleet.compile:
    render_dir: ~/.mseg/render
  run_once: true
  delegate_to: localhost

- name: Compile once and keep the rulesets for an apply step
  mseg.fleet.compile:
    return_rulesets: true
  run_once: true
  register: mseg_compiled
"""

RETURN = r"""
policy_digest:
  description: SHA-256 of the validated, normalised policy.
  returned: success
  type: str
  sample: 56233809f53df278d9b0b0d8f7f1ff4b3c8b4a1b0d2e6b6d9b7a0c1e2f3a4b5c
hosts:
  description: Number of hosts rendered.
  returned: success
  type: int
  sample: 8
summary:
  description: Per host, its mode, its merged labels and the size of its ruleset.
  returned: success, when O(return_summary=true)
  type: dict
  sample: {"web-01": {"mode": "enforce", "rules": 25, "sets": 8, "elements": 6, "counters": 8, "chains": 3,
           "ingress_rules": 3, "egress_rules": 2, "tags": {"env": ["prod"], "role": ["web"]}}}
warnings_list:
  description: Warnings about the policy, such as selectors that select no host.
  returned: success
  type: list
  elements: str
files:
  description: Paths written (or kept unchanged) in O(render_dir).
  returned: success
  type: list
  elements: str
render_dir:
  description: O(render_dir) as an absolute path, so that a later task can read C(<inventory_hostname>.nft) there.
  returned: when O(render_dir) is set
  type: str
rulesets:
  description: The rendered C(nft -f) files, keyed by inventory hostname.
  returned: when O(return_rulesets=true)
  type: dict
mode_rulesets:
  description: Per host, the rendered ruleset for each mode in O(other_modes).
  returned: when O(other_modes) is not empty
  type: dict
  sample: {"web-01": {"observe": "...", "enforce": "..."}}
problems:
  description: Every problem found in the policy or inventory, one sentence each.
  returned: failure
  type: list
  elements: str
"""
