# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The emergency bypass ruleset of a host, built without the policy."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: bypass_ruleset
short_description: The bypass ruleset of a host, built without any policy
version_added: 0.1.0
description:
  - Returns a complete C(nft -f) file that replaces table C(inet mseg) with one that accepts every packet in both
    directions and counts it in the named counters C(mode_bypass) (a bypass table) and C(emergency_bypass) (put
    there by an operator, outside the inventory), so the P(mseg.fleet.policy#role) role keeps it until it is lifted.
  - It needs no policy and no inventory contract, so an emergency bypass works even when the policy document is
    broken. Apply it with M(mseg.fleet.nft_apply), as the C(mseg.fleet.bypass) playbook does.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  _input:
    description: The host's inventory name, written into the file's header.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Put this host in bypass
  mseg.fleet.nft_apply:
    content: "{{ inventory_hostname | mseg.fleet.bypass_ruleset }}"
"""

RETURN = r"""
_value:
  description: The ruleset text.
  type: str
"""

from ansible.errors import AnsibleFilterError  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset  # noqa: E402


def _bypass_ruleset(host):
    if not isinstance(host, str) or not host or "\n" in host:
        raise AnsibleFilterError("bypass_ruleset: expected an inventory hostname, got %r" % (host,))
    return bypass_ruleset(host)


class FilterModule(object):
    def filters(self):
        return {"bypass_ruleset": _bypass_ruleset}
