# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery's input: flow records and the settings that judge them (docs/discovery.md).

A flow record is one observed connection (or a count of identical ones) in its original direction, as the kernel's
connection tracking or a packet capture sees it:

| field | meaning |
| --- | --- |
| ``src``, ``dst`` | the client's and the server's IPv4/IPv6 address |
| ``proto`` | ``tcp``, ``udp``, ``icmp`` or an IP protocol (``vrrp``, ``gre``, ``esp``, ``ah``, or its number) |
| ``dport`` | the destination port (tcp and udp only; empty otherwise) |
| ``count`` | how many such connections (default 1) |
| ``listening`` | whether the receiver had a socket listening on ``dport``: ``true``, ``false``, or empty = unknown |

Records come as CSV with that header line, or as mappings (JSON lines). Parsing costs one dictionary update per
record: identical records are summed into one flow before any address is parsed, so the work on addresses grows
with the distinct flows, not the records.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import re
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import IP_PROTOCOLS, WORD_PROTOCOLS
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import (
    _describe, _parse_cidrs, _parse_ports, _unknown_keys,
)

try:
    import netaddr
except ImportError:  # pragma: no cover - parse_policy reports it
    netaddr = None

FIELDS = ("src", "dst", "proto", "dport", "count", "listening")
PORTED = ("tcp", "udp")
MAX_REPORTED = 20
SETTINGS_KEYS = ("ephemeral_ports", "exclude", "first_id", "group_by", "id_step", "min_count",
                 "outside_min_addresses", "outside_prefix_v4", "outside_prefix_v6", "port_gap")
EXCLUDE_KEYS = ("cidr", "ports")
_RANGE_RE = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})$")
_TRUE = frozenset(("true", "yes", "1"))
_FALSE = frozenset(("false", "no", "0"))
_UNKNOWN = frozenset(("", "unknown", "none", "null"))
_FAST_LISTENING = {"true": True, "false": False, "": None}


class Settings(namedtuple("Settings", "group_by min_count exclude outside_prefix outside_min_addresses "
                                      "ephemeral port_gap first_id id_step")):
    """How flows become a proposal. ``exclude`` is a tuple of (IPSet or None, ports tuple or None);
    ``outside_prefix`` maps 4 and 6 to a prefix length; ``ephemeral`` is an inclusive (first, last) port range."""

    __slots__ = ()


DEFAULT_SETTINGS = {
    "group_by": ["role"],
    "min_count": 3,
    "exclude": [],
    "outside_prefix_v4": 24,
    "outside_prefix_v6": 64,
    "outside_min_addresses": 2,
    "ephemeral_ports": "32768-60999",
    "port_gap": 0,
    "first_id": 1000,
    "id_step": 10,
}


def _int_setting(problems, raw, key, low, high):
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append("mseg_discover_%s: %s is not an integer from %d to %d" % (key, _describe(value), low, high))
        return DEFAULT_SETTINGS[key]
    return value


def parse_settings(raw=None):
    """Validate the settings (each may be omitted; DEFAULT_SETTINGS fills in); raise MsegError with every problem."""
    raw = dict(raw or {})
    problems = []
    _unknown_keys(problems, "mseg_discover", raw, SETTINGS_KEYS)
    merged = dict(DEFAULT_SETTINGS)
    merged.update((k, v) for k, v in raw.items() if k in SETTINGS_KEYS and v is not None)
    group_by = merged["group_by"]
    if isinstance(group_by, str):
        group_by = [group_by]
    if not isinstance(group_by, list) or not group_by:
        problems.append("mseg_discover_group_by: expected a list of label names, e.g. [role] or [role, env]; got %s"
                        % _describe(merged["group_by"]))
        group_by = DEFAULT_SETTINGS["group_by"]
    for index, key in enumerate(group_by):
        if not isinstance(key, str) or not key:
            problems.append("mseg_discover_group_by[%d]: %s is not a label name (a non-empty string)"
                            % (index, _describe(key)))
    ints = {key: _int_setting(problems, merged, key, low, high) for key, low, high in (
        ("min_count", 1, 2 ** 31), ("outside_prefix_v4", 8, 32), ("outside_prefix_v6", 16, 128),
        ("outside_min_addresses", 1, 2 ** 16), ("port_gap", 0, 1024), ("first_id", 1, 65535), ("id_step", 1, 1000))}
    ephemeral = _port_range(merged["ephemeral_ports"])
    if ephemeral is None:
        problems.append("mseg_discover_ephemeral_ports: %s is not a port range first-last within 1-65535; write the "
                        "hosts' net.ipv4.ip_local_port_range, e.g. 32768-60999" % _describe(merged["ephemeral_ports"]))
    exclude = []
    if not isinstance(merged["exclude"], list):
        problems.append("mseg_discover_exclude: expected a list of {cidr: [...], ports: [...]}; got %s"
                        % _describe(merged["exclude"]))
    else:
        for index, item in enumerate(merged["exclude"]):
            where = "mseg_discover_exclude[%d]" % index
            if not isinstance(item, dict) or not item:
                problems.append("%s: expected a mapping with cidr, ports or both, e.g. {cidr: [192.0.2.0/24], "
                                "ports: [udp/5353]}; got %s" % (where, "an empty one" if item == {} else _describe(item)))
                continue
            before = len(problems)
            _unknown_keys(problems, where, item, EXCLUDE_KEYS)
            cidrs = _parse_cidrs(problems, where + ".cidr", item["cidr"]) if "cidr" in item else None
            ports = _parse_ports(problems, where + ".ports", item["ports"]) if "ports" in item else None
            if len(problems) == before and (cidrs or ports):
                exclude.append((netaddr.IPSet(cidrs) if cidrs else None, ports))
    if problems:
        raise MsegError(problems)
    return Settings(tuple(group_by), ints["min_count"], tuple(exclude),
                    {4: ints["outside_prefix_v4"], 6: ints["outside_prefix_v6"]}, ints["outside_min_addresses"],
                    ephemeral, ints["port_gap"], ints["first_id"], ints["id_step"])


@contextlib.contextmanager
def paused_gc():
    """Pause the cycle collector while millions of small tuples are built (they form no cycles; with it running,
    building them costs about 40% more): restored afterwards, whatever happens."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _port_range(text):
    match = _RANGE_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    return (first, last) if 1 <= first <= last <= 65535 else None


class Flows(object):
    """Records summed per (src, dst, proto, dport): ``counts`` maps that key to the number of connections,
    ``listening`` to True/False/None (True wins over False, a known answer over unknown); ``problems`` holds one
    message per malformed record (the first MAX_REPORTED; ``bad`` counts them all)."""

    def __init__(self):
        self.counts = {}
        self.listening = {}
        self.records = 0
        self.bad = 0
        self.problems = []

    def _problem(self, where, message):
        """``where`` is a text, or a (format, source, position) triple formatted only when reported."""
        self.bad += 1
        if len(self.problems) < MAX_REPORTED:
            if isinstance(where, tuple):
                where = where[0] % where[1:]
            self.problems.append("%s: %s" % (where, message))

    def add(self, where, src, dst, proto, dport, count, listening):
        """Add one record given as text fields (CSV) or YAML/JSON scalars; a malformed one becomes a problem."""
        self.records += 1
        proto_text = str(proto).strip().lower() if proto is not None else ""
        if proto_text.isdigit() and int(proto_text) in WORD_PROTOCOLS:
            proto_text = WORD_PROTOCOLS[int(proto_text)]
        if proto_text in PORTED:
            try:
                port = int(dport)
            except (TypeError, ValueError):
                port = 0
            if not 1 <= port <= 65535 or isinstance(dport, bool):
                return self._problem(where, "dport: %s is not a port from 1 to 65535" % _describe(dport))
        else:
            proto_text, port = _protocol(proto_text)
            if proto_text is None:
                return self._problem(where, "proto: %s is not tcp, udp, icmp or an IP protocol (%s, or a number "
                                            "1-255)" % (_describe(proto), ", ".join(sorted(IP_PROTOCOLS))))
        if count in (None, ""):
            number = 1
        else:
            try:
                number = int(count)
            except (TypeError, ValueError):
                number = -1
            if number < 1 or isinstance(count, bool):
                return self._problem(where, "count: %s is not a positive integer" % _describe(count))
        heard = _listening(listening)
        if heard == "bad":
            return self._problem(where, "listening: %s is not true, false or empty (unknown)" % _describe(listening))
        if not isinstance(src, str) or not src or not isinstance(dst, str) or not dst:
            return self._problem(where, "src and dst must both be addresses")
        key = (src.strip(), dst.strip(), proto_text, port)
        self.counts[key] = self.counts.get(key, 0) + number
        if heard is not None:
            previous = self.listening.get(key)
            self.listening[key] = heard or bool(previous)
        return None


def _protocol(text):
    """``(proto, port)`` as trace evaluates it: icmp has no port, an IP protocol is ``proto`` and its number."""
    if text in ("icmp", "icmpv6", "ipv6-icmp"):
        return "icmp", None
    if text in IP_PROTOCOLS:
        return "proto", IP_PROTOCOLS[text]
    if text.isdigit() and 1 <= int(text) <= 255:
        return "proto", int(text)
    return None, None


def _listening(value):
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in _UNKNOWN:
        return None
    return "bad"


def read_csv(lines, flows=None, source="records"):
    """Sum CSV records (a header line naming FIELDS, in any order; ``count`` and ``listening`` may be absent)."""
    flows = Flows() if flows is None else flows
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return flows
    header = [h.strip().lower() for h in header]
    missing = [f for f in ("src", "dst", "proto", "dport") if f not in header]
    if missing:
        raise MsegError("%s: the header line %s lacks %s; the first line must name the columns %s"
                        % (source, ",".join(header), ", ".join(missing), ",".join(FIELDS)))
    column = {f: header.index(f) for f in FIELDS if f in header}
    width = len(header)
    isrc, idst, iproto, iport = column["src"], column["dst"], column["proto"], column["dport"]
    icount, ilisten = column.get("count"), column.get("listening")
    counts, heard = flows.counts, flows.listening
    fast = 0
    with paused_gc():
        for number, row in enumerate(reader, 2):
            if len(row) == width:
                # the collector's own spelling takes this path; anything else is judged by Flows.add
                proto, port = row[iproto], row[iport]
                count = row[icount] if icount is not None else "1"
                listen = row[ilisten] if ilisten is not None else ""
                if proto in PORTED and port.isdecimal() and count.isdecimal() and listen in _FAST_LISTENING:
                    port, count = int(port), int(count)
                    if 1 <= port <= 65535 and count >= 1:
                        key = (row[isrc].strip(), row[idst].strip(), proto, port)
                        counts[key] = counts.get(key, 0) + count
                        known = _FAST_LISTENING[listen]
                        if known is not None:
                            heard[key] = True if known else heard.get(key, False)
                        fast += 1
                        continue
                flows.add(("%s line %d", source, number), row[isrc], row[idst], row[iproto], row[iport],
                          row[icount] if icount is not None else None, row[ilisten] if ilisten is not None else None)
            elif row:
                flows.records += 1
                flows._problem(("%s line %d", source, number), "%d fields, the header has %d" % (len(row), width))
    flows.records += fast
    return flows


def read_mappings(items, flows=None, source="records"):
    """Sum records given as mappings (JSON lines, YAML)."""
    flows = Flows() if flows is None else flows
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            flows.records += 1
            flows._problem("%s[%d]" % (source, index), "expected a mapping with %s; got %s"
                           % (", ".join(FIELDS), _describe(item)))
            continue
        flows.add(("%s[%d]", source, index), item.get("src"), item.get("dst"), item.get("proto"),
                  item.get("dport"), item.get("count"), item.get("listening"))
    return flows
