# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ports as the policy writes them (``tcp/8080``, ``tcp/8000-8099``, ``udp``, ``icmp``): the one parser.

Used by the compiler (policy rules), trace, the health probes and the agent's ``mseg trace``.
"""

from __future__ import annotations

import re
from collections import namedtuple

PROTOCOLS = ("tcp", "udp", "icmp")
_PORT_RE = re.compile(r"^(?P<proto>[a-z0-9]+)(?:/(?P<first>[0-9]+)(?:-(?P<last>[0-9]+))?)?$")
ONE_PORT_HINT = "must name one port, e.g. tcp/5432, udp/53 or icmp"


class PortSpec(namedtuple("PortSpec", "proto first last")):
    """A protocol and an inclusive destination port range; ``first`` is None for every port (or for icmp)."""

    __slots__ = ()

    def __str__(self):
        if self.first is None:
            return self.proto
        if self.first == self.last:
            return "%s/%d" % (self.proto, self.first)
        return "%s/%d-%d" % (self.proto, self.first, self.last)

    @property
    def single(self):
        """True for ``icmp`` or exactly one tcp/udp port: what a probe or a traced flow needs."""
        return self.proto == "icmp" or (self.first is not None and self.first == self.last)

    def matches(self, proto, port):
        if proto != self.proto:
            return False
        return self.first is None or (port is not None and self.first <= port <= self.last)


def parse_port(text):
    """Parse ``tcp/8080``, ``tcp/8000-8099``, ``udp`` or ``icmp``; returns (PortSpec, None) or (None, reason)."""
    if not isinstance(text, str):
        if isinstance(text, int) and not isinstance(text, bool):
            return None, "needs a protocol; write tcp/%d or udp/%d" % (text, text)
        return None, "is not a string like tcp/8080"
    match = _PORT_RE.match(text.strip().lower())
    if not match:
        return None, "is not of the form tcp/8080, tcp/8000-8099, udp/53 or icmp"
    proto, first, last = match.group("proto"), match.group("first"), match.group("last")
    if proto not in PROTOCOLS:
        return None, "has an unknown protocol '%s'; use one of %s" % (proto, ", ".join(PROTOCOLS))
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


def parse_single_port(text):
    """One port or icmp (``tcp/5432``, ``udp/53``, ``icmp``): (PortSpec, None) or (None, reason)."""
    spec, reason = parse_port(text)
    if spec is None:
        return None, reason
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
