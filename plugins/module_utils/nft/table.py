# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The skeleton every mseg table shares, whatever fills it (a compiled policy or the bypass table)."""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.nft import model

_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}


def new_table():
    """Table ``inet mseg`` with the management sets the apply engine fills with the controller's SSH address.

    Every table declares them, so an apply can always add the address Ansible connects from (anti-lockout).
    """
    table = model.Table(contract.TABLE_FAMILY, contract.TABLE_NAME)
    for version, name in sorted(contract.MGMT_AUTO_SET.items()):
        table.add_set(model.Set(name, "%s . inet_service" % _ADDR_TYPE[version]))
    return table
