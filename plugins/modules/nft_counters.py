#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nft_counters
short_description: Read the named counters of table inet mseg
version_added: 0.1.0
description:
  - Returns every named counter of the mseg.fleet table (C(rule_<id>_in), C(rule_<id>_out), C(default_in),
    C(mgmt_in), C(mode_bypass) ...) with its packets and bytes. Never changes the host.
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
"""

import json  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    nft = module.get_bin_path("nft", required=True)
    rc, out, err = module.run_command([nft, "-j", "list", "counters", "table", "inet", "mseg"])
    if rc != 0:
        if "No such file or directory" in err or "does not exist" in err:
            module.exit_json(changed=False, table_present=False, counters={})
        module.fail_json(msg="nft could not list the counters of table inet mseg: %s" % (err.strip() or out.strip()))
    try:
        data = json.loads(out)
    except ValueError:
        module.fail_json(msg="nft printed something that is not JSON: %s" % out[:200])
    counters = {}
    for item in data.get("nftables", []):
        counter = item.get("counter")
        if counter:
            counters[counter["name"]] = {"packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0)}
    module.exit_json(changed=False, table_present=True, counters=counters)


if __name__ == "__main__":
    main()
