# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read one kernel log line written by an mseg ruleset (``[MSEG-DROP]``, ``[MSEG-AUDIT]``, ``[MSEG-LOG]``).

The one parser of those lines: the controller's observe report and the agent's drop log both use it, and the
prefixes it recognises are the contract's (``common.contract.LOG_LINE_RE``).
"""

from __future__ import annotations

import ipaddress
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract

PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "ICMP": "icmp", "ICMPv6": "icmp", "58": "icmp"}


class Event(namedtuple("Event", "kind rule direction src dst proto dport")):
    """One logged packet: kind AUDIT/DROP/LOG, the rule id (0 for the default), ingress or egress."""

    __slots__ = ()

    @property
    def port(self):
        if self.proto == "icmp" or self.dport is None:
            return self.proto
        return "%s/%d" % (self.proto, self.dport)


def _address(text):
    """The kernel writes IPv6 addresses fully expanded; use the compressed form everything else uses."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return text


def parse_line(line):
    """An Event for an mseg log line, or None for any other line."""
    found = contract.LOG_LINE_RE.search(line)
    if not found:
        return None
    direction = "egress" if found.group("oif") else "ingress"
    proto = PROTOCOLS.get(found.group("proto"), found.group("proto").lower())
    dport = int(found.group("dport")) if found.group("dport") else None
    return Event(found.group("kind"), int(found.group("id")), direction, _address(found.group("src")),
                 _address(found.group("dst")), proto, dport)
