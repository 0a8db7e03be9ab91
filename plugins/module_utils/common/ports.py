# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ports as the policy writes them (``tcp/8080``, ``tcp/8000-8099``, ``udp``, ``icmp``, ``vrrp``, ``proto/112``): the
one parser.

An IP protocol other than tcp, udp and icmp is a PortSpec of protocol ``proto`` whose range holds protocol numbers
(``vrrp`` is ``proto/112``; the words come from the wire contract's ``IP_PROTOCOLS``). Used by the compiler (policy
rules), trace, the health probes and the agent's ``mseg trace``.
"""

from __future__ import annotations

import re
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import IP_PROTOCOLS, WORD_PROTOCOLS

PROTOCOLS = ("tcp", "udp", "icmp")
IP_PROTOCOL = "proto"
_PROTOCOL_NAME = {number: name for name, number in IP_PROTOCOLS.items()}
_KNOWN = ", ".join(PROTOCOLS + tuple(sorted(IP_PROTOCOLS)) + ("proto/<number>",))
_PORT_RE = re.compile(r"^(?P<proto>[a-z0-9]+)(?:/(?P<first>[0-9]+)(?:-(?P<last>[0-9]+))?)?$")
ONE_PORT_HINT = "must name one port, e.g. tcp/5432, udp/53 or icmp"


class PortSpec(namedtuple("PortSpec", "proto first last")):
    """A protocol and an inclusive destination port range; ``first`` is None for every port (or for icmp)."""

    __slots__ = ()

    def __str__(self):
        if self.proto == IP_PROTOCOL and self.first == self.last and self.first in _PROTOCOL_NAME:
            return _PROTOCOL_NAME[self.first]
        if self.first is None:
            return self.proto
        if self.first == self.last:
            return "%s/%d" % (self.proto, self.first)
        return "%s/%d-%d" % (self.proto, self.first, self.last)

    @property
    def single(self):
        """True for ``icmp``, exactly one tcp/udp port or one IP protocol: what a traced flow needs."""
        return self.proto == "icmp" or (self.first is not None and self.first == self.last)

    def matches(self, proto, port):
        if proto != self.proto:
            return False
        return self.first is None or (port is not None and self.first <= port <= self.last)


def parse_port(text):
    """Parse ``tcp/8080``, ``tcp/8000-8099``, ``udp``, ``icmp``, ``vrrp`` or ``proto/112``; returns (PortSpec, None)
    or (None, reason)."""
    if not isinstance(text, str):
        if isinstance(text, int) and not isinstance(text, bool):
            return None, "needs a protocol; write tcp/%d or udp/%d" % (text, text)
        return None, "is not a string like tcp/8080"
    match = _PORT_RE.match(text.strip().lower())
    if not match:
        return None, "is not of the form tcp/8080, tcp/8000-8099, udp/53 or icmp"
    proto, first, last = match.group("proto"), match.group("first"), match.group("last")
    if proto in IP_PROTOCOLS:
        if first is not None:
            return None, "%s is an IP protocol without ports; write %s" % (proto, proto)
        return PortSpec(IP_PROTOCOL, IP_PROTOCOLS[proto], IP_PROTOCOLS[proto]), None
    if proto == IP_PROTOCOL:
        return _parse_ip_protocol(first, last)
    if proto not in PROTOCOLS:
        return None, "has an unknown protocol '%s'; use one of %s" % (proto, _KNOWN)
    if proto == "icmp":
        if first is not None:
            return None, "icmp has no ports; write icmp"
        return PortSpec("icmp", None, None), None
    if first is None:
        return PortSpec(proto, None, None), None
    lo = int(first)
    hi = int(last) if last is not None else lo
    if not 1 <= lo <= 65535 or not 1 <= hi <= 65535:
        return None, "has a port outside 1-65535"
    if lo > hi:
        return None, "has a range whose start is above its end; write %s/%d-%d" % (proto, hi, lo)
    return PortSpec(proto, lo, hi), None


def _parse_ip_protocol(first, last):
    if first is None:
        return None, "needs an IP protocol number; write e.g. proto/112 (or vrrp)"
    lo = int(first)
    hi = int(last) if last is not None else lo
    if not 1 <= lo <= 255 or not 1 <= hi <= 255:
        return None, "has an IP protocol number outside 1-255"
    if lo > hi:
        return None, "has a range whose start is above its end; write proto/%d-%d" % (hi, lo)
    worded = sorted(n for n in WORD_PROTOCOLS if lo <= n <= hi)
    if worded:
        return None, "names protocol %d, which the policy writes as %s (with its ports)" % (
            worded[0], WORD_PROTOCOLS[worded[0]])
    return PortSpec(IP_PROTOCOL, lo, hi), None


def parse_single_port(text, ip_protocols=False):
    """One port or icmp (``tcp/5432``, ``udp/53``, ``icmp``), or with ``ip_protocols`` one IP protocol (``vrrp``):
    (PortSpec, None) or (None, reason). Probes and the agent's packet trace send tcp, udp or icmp only."""
    spec, reason = parse_port(text)
    if spec is None:
        return None, reason
    if spec.proto == IP_PROTOCOL and not ip_protocols:
        return None, "names an IP protocol; a probe sends tcp/<port>, udp/<port> or icmp"
    if not spec.single:
        return None, ONE_PORT_HINT
    return spec, None


def normalise_ports(specs):
    """Sort, de-duplicate and merge overlapping or adjacent ranges per protocol."""
    by_proto = {}
    for spec in specs:
        by_proto.setdefault(spec.proto, []).append(spec)
    merged = []
    for proto in sorted(by_proto):
        items = by_proto[proto]
        if any(s.first is None for s in items):
            merged.append(PortSpec(proto, None, None))
            continue
        ranges = sorted((s.first, s.last) for s in items)
        lo, hi = ranges[0]
        for first, last in ranges[1:]:
            if first <= hi + 1:
                hi = max(hi, last)
            else:
                merged.append(PortSpec(proto, lo, hi))
                lo, hi = first, last
        merged.append(PortSpec(proto, lo, hi))
    return tuple(merged)
