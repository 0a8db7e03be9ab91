"""Texts shaped like what the renderer writes, shared by the nft and apply tests; their JSON form as nft reads it."""

import os

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import find_nft

# A rendered ruleset: its own preamble, the management sets, comments that look like statements.
RULESET = """#!/usr/sbin/nft -f
# mseg.fleet ruleset for web-01: mode=enforce policy=0123abcd
table inet mseg {}
delete table inet mseg
table inet mseg {
    set mgmt_auto_v4 {
        type ipv4_addr . inet_service
    }
    set mgmt_auto_v6 {
        type ipv6_addr . inet_service
    }
    chain input {
        type filter hook input priority filter; policy drop;
        ip saddr . tcp dport @mgmt_auto_v4 counter accept comment "flush ruleset { is only a comment"
        # table ip nat { a comment is not a statement }
        counter log prefix "[MSEG-DROP] ID=0 " drop
    }
}
"""


def json_form(text):
    """The JSON form nft itself makes of ``text`` (the form the allowlist judges), read in a scratch namespace."""
    if os.geteuid() != 0:
        pytest.skip("reading a ruleset's JSON form takes a scratch network namespace (root)")
    return [item for item in jsonform.parse(text, find_nft())
            if list(item)[0] == "metainfo" or (list(item.values())[0].get("name") != jsonform.CANARY_NAME
                                               and list(item.values())[0].get("table") != jsonform.CANARY_NAME)]
