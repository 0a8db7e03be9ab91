#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nft_counters
short_description: Read the named counters of table inet mseg, and which markers it carries
version_added: 0.1.0
description:
  - Returns every named counter of the mseg.fleet table (C(rule_<id>_in), C(rule_<id>_out), C(default_in),
    C(mgmt_in), C(mode_bypass) ...) with its packets and bytes. Never changes the host.
  - Also says which marker counters the live table carries, so that a playbook can tell a bypass table, and the
    emergency bypass table (put in place by C(mseg.fleet.bypass) or C(mseg.fleet.mode)), from a policy without
    naming a counter.
  - When the table does not exist, returns an empty dict and C(table_present=false).
author:
  - mseg.fleet contributors (@mseg-fleet)
options: {}
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
attributes:
  check_mode:
    description: Reads in check mode too.
  platform:
    description: Linux hosts; needs C(nft) and root (C(become)).
seealso:
  - module: mseg.fleet.nft_apply
"""

EXAMPLES = r"""
- name: Read the counters
  mseg.fleet.nft_counters:
  become: true
  register: counters

- name: Packets the default drop counted
  ansible.builtin.debug:
    msg: "{{ counters.counters.default_in.packets | default(0) }}"

- name: Leave a host in emergency bypass alone
  ansible.builtin.meta: end_host
  when: counters.emergency_bypass
"""

RETURN = r"""
table_present:
  description: Whether table inet mseg exists.
  returned: always
  type: bool
counters:
  description: Counter name to C(packets) and C(bytes).
  returned: always
  type: dict
  sample: {"rule_1024_in": {"packets": 12, "bytes": 720}, "default_in": {"packets": 3, "bytes": 180}}
markers:
  description: >-
    The marker counters the table carries, sorted: C(mode_bypass) (a bypass table), C(emergency_bypass) (the
    emergency bypass table, which also carries C(mode_bypass)), C(mode_failsafe) (the fail-closed table the boot
    restore loaded because the persisted ruleset was rejected).
  returned: always
  type: list
  elements: str
  sample: ["emergency_bypass", "mode_bypass"]
  version_added: 0.2.0
bypass:
  description: Whether the live table is a bypass table (an inventory's C(mseg_mode=bypass) or the emergency one).
  returned: always
  type: bool
  version_added: 0.2.0
emergency_bypass:
  description: >-
    Whether the live table is the emergency bypass table, which the policy role keeps until the operator lifts it
    with C(mseg.fleet.mode).
  returned: always
  type: bool
  version_added: 0.2.0
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft, NftError  # noqa: E402


def report(listed):
    """The module's result for ``Nft.counters()``'s answer (``None`` when the table does not exist)."""
    counters = {name: {"packets": packets, "bytes": size} for name, packets, size in listed or ()}
    markers = sorted(name for name in counters if name in contract.MARKERS)
    return {"changed": False, "table_present": listed is not None, "counters": counters, "markers": markers,
            "bypass": contract.BYPASS_MARKER in markers, "emergency_bypass": contract.EMERGENCY_MARKER in markers}


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    try:
        listed = Nft().counters()
    except NftError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**report(listed))


if __name__ == "__main__":
    main()
