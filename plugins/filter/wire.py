# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A name of the wire contract, for roles and playbooks: YAML and Jinja read the contract, never spell it out."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: wire
short_description: A name of the mseg.fleet wire contract (table, markers, log prefixes, files, host CLI)
version_added: 0.2.0
description:
  - Returns the value the collection's wire contract (C(plugins/module_utils/common/contract.py)) gives a name,
    so that roles and playbooks use the same table name, bypass markers, log tags, file names and host CLI name as
    the Python that writes and reads them, instead of a copy that could drift.
  - Only the contract's public constants are available (upper-case names such as C(EMERGENCY_MARKER),
    C(TABLE), C(PREVIOUS_FILE), C(HOST_CLI)); an unknown name fails and lists the near misses.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  _input:
    description: The name of a constant of the contract.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Read whether the live table carries the emergency bypass marker
  ansible.builtin.command:
    argv: [nft, list, counter, inet, mseg, "{{ 'EMERGENCY_MARKER' | mseg.fleet.wire }}"]
  changed_when: false
"""

RETURN = r"""
_value:
  description: The contract's value for that name (a string, number, list or mapping).
  type: raw
"""

import difflib  # noqa: E402

from ansible.errors import AnsibleFilterError  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract  # noqa: E402


def names():
    """The public constants of the contract: upper-case names bound to plain values."""
    return sorted(name for name, value in vars(contract).items()
                  if name.isupper() and not name.startswith("_")
                  and isinstance(value, (str, int, tuple, list, dict)))


def wire(name):
    if not isinstance(name, str) or name not in names():
        near = difflib.get_close_matches(str(name).upper(), names(), 3, 0.6)
        raise AnsibleFilterError("wire: %r is not a name of the mseg.fleet wire contract%s" % (
            name, "; did you mean %s?" % " or ".join(near) if near else "; see plugins/module_utils/common/contract.py"))
    value = getattr(contract, name)
    return list(value) if isinstance(value, tuple) else value


class FilterModule(object):
    def filters(self):
        return {"wire": wire}
