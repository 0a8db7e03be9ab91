"""Texts shaped like what the renderer writes, shared by the nft and apply tests."""

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
