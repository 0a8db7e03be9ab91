# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bypass tables: accept everything, count it, and carry the markers that say which bypass holds.

Used on the controller (an inventory's ``mseg_mode: bypass``, ``mseg.fleet.bypass``) and on the host (the agent's
``mseg mode bypass``), so it lives apart from the compiler.
"""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.nft import model
from ansible_collections.mseg.fleet.plugins.module_utils.nft.table import new_table


def bypass_table(markers=(contract.BYPASS_MARKER,), comment="mode=bypass"):
    """A table that accepts everything in both directions and counts it into each of ``markers``."""
    table = new_table()
    for marker in markers:
        table.counter(marker)
    counted = " ".join("counter name %s" % model.quote(marker) for marker in markers)
    for direction in contract.DIRECTIONS:
        table.chain(contract.BASE_CHAIN[direction], type_="filter", hook=contract.HOOK[direction]).add(
            counted + " accept", comment)
    return table


def bypass_ruleset(host):
    """The emergency bypass table for a host, without any policy: accept everything, count it, carry both markers.

    ``mode_bypass`` says the table is a bypass table; ``emergency_bypass`` says an operator put it there outside
    the inventory, so the policy role does not replace it until the operator lifts it (``mseg.fleet.mode``).
    """
    header = [
        "mseg.fleet ruleset for %s: mode=bypass (emergency, no policy)" % host,
        "Accepts everything; the counter %s marks it so that nothing re-applies the policy unasked."
        % contract.EMERGENCY_MARKER,
    ]
    table = bypass_table((contract.BYPASS_MARKER, contract.EMERGENCY_MARKER), "mode=bypass (emergency)")
    return model.replace_script(table, header)
