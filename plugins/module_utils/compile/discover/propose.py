# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From summed flows to a proposed policy: endpoint pairs, label pairs, rules (docs/discovery.md, "The algorithm").

1. Each flow's addresses are resolved once per distinct address: a fleet host (by ``mseg_addresses``) or an outside
   address. Flows that are malformed, excluded, loopback, or not to a server port (the receiver was not listening,
   or nobody knows and the port is in the ephemeral range) are left out, each with its reason.
2. Outside addresses are aggregated: the addresses of one ``outside_prefix_v4``/``_v6`` prefix become that prefix
   when there are at least ``outside_min_addresses`` of them and it holds no fleet address; else each stays itself.
3. Flows become endpoint pairs (host or outside prefix, both ends, one protocol and port); a pair seen fewer than
   ``min_count`` times is noise, left out and reported.
4. Each host stands for its label group (its values of the ``group_by`` labels, when it carries exactly one of
   each), else for itself; each pair of groups collects its ports. Consecutive ports (gaps up to ``port_gap``)
   become one range; nothing else is merged.
5. One rule per pair of groups and ports; then rules with the same source and ports unite their destinations, and a
   union that covers every host carrying the ``group_by`` labels (bar the rule's own sources) becomes
   ``{has: [...]}``; then rules with the same destinations and ports unite their sources, the same way.
6. Rules are named ``<from>-to-<to>`` and numbered from ``first_id`` in steps of ``id_step``, skipping the current
   policy's ids. Flows to outside addresses get rules only when the egress default is deny.

Cost: one dictionary update per record (records.py); everything after grows with the distinct flows and
addresses, plus groups x ports for the rules; never hosts x hosts.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import re
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import PortSpec
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import (
    Settings, parse_settings, paused_gc,
)
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import DEFAULTS, MAX_RULE_ID

try:
    import netaddr
except ImportError:  # pragma: no cover - parse_policy reports it
    netaddr = None

MAX_COMMENT_FLOWS = 3
MAX_NAME = 48
HOST, NET, TAGS, HAS = "host", "net", "tags", "has"
LEFT_OUT = ("bad_address", "excluded", "loopback", "outside_only", "not_listening", "ephemeral", "below_threshold")
_PORTED = ("tcp", "udp")
_PLAIN_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_PLAIN_IPV4 = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?$")
_YAML_WORDS = frozenset(("y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf"))
_NAME_CHARS = re.compile(r"[^a-z0-9_-]+")


class Flow(namedtuple("Flow", "src dst proto port count")):
    """An endpoint pair: ``src``/``dst`` are (HOST, name) or (NET, prefix text); ``port`` None for icmp."""

    __slots__ = ()

    @property
    def service(self):
        return service_text(self.proto, self.port)

    def text(self):
        return "%s -> %s %s" % (self.src[1], self.dst[1], self.service)


class Proposed(namedtuple("Proposed", "id name sources destinations ports flows")):
    """A proposed rule: ``sources``/``destinations`` are tuples of groups, ``ports`` of PortSpec, ``flows`` the
    endpoint pairs that justify it."""

    __slots__ = ()

    @property
    def connections(self):
        return sum(f.count for f in self.flows)


def service_text(proto, port):
    if proto == "icmp":
        return "icmp"
    return str(PortSpec(proto, port, port))


def _key_text(key):
    return str(ipaddress.ip_address(key[1]) if key[0] == 4 else ipaddress.IPv6Address(key[1]))


class Discovery(object):
    """The whole result: what was left out and why, the flows kept, the proposed rules and the proposed document.

    ``left_out`` maps each reason of LEFT_OUT to a list of (item, connections), the item a record's key (src, dst,
    proto, port) or, below the threshold, an endpoint pair (see ``item_text`` and ``largest``); ``kept`` lists the
    Flows at or above the threshold; ``pairs`` maps every endpoint pair (src, dst, proto, port), kept or noise, to
    [connections, the record keys summed into it] (what check.py traces).
    """

    def __init__(self, settings, fleet, records):
        self.settings = settings
        self.fleet = fleet
        self.records = records
        self.left_out = {reason: [] for reason in LEFT_OUT}
        self.kept = []
        self.pairs = {}
        self.rules = []
        self.by_default = []
        self.document = None
        self.yaml = None


def propose(flows, fleet, settings=None, current=None):
    """Turn summed ``flows`` (records.Flows) into a Discovery for ``fleet`` (a compiled FleetPlan: its hosts and, when
    ``current`` is true, its policy is the current one, whose ids the proposal avoids and whose defaults it keeps)."""
    if not isinstance(settings, Settings):
        settings = parse_settings(settings)
    result = Discovery(settings, fleet, flows)
    index = _AddressIndex(fleet)
    endpoints = {name: (HOST, name) for name in fleet.hosts}
    pairs = result.pairs
    with paused_gc():
        _sort(result, flows, index, endpoints, pairs)
    result.kept.sort(key=_flow_order)
    defaults = dict(fleet.policy.defaults) if current else dict(DEFAULTS)
    taken = {rule.id for rule in fleet.policy.rules} if current else set()
    _build_rules(result, defaults, taken)
    return result


def _sort(result, flows, index, endpoints, pairs):
    """Sort every summed flow into a reason to leave it out or an endpoint pair (steps 1 to 3)."""
    settings = result.settings
    resolved = {}
    inside = {}
    outside = {}
    pending = []
    left = result.left_out
    listening = flows.listening
    low, high = settings.ephemeral
    for key, count in flows.counts.items():
        src, dst, proto, port = key
        source = resolved.get(src)
        if source is None:
            source = resolved[src] = _resolve(src, index, endpoints)
        target = resolved.get(dst)
        if target is None:
            target = resolved[dst] = _resolve(dst, index, endpoints)
        skey, sep = source
        dkey, dep = target
        if skey is None or dkey is None:
            left["bad_address"].append((key, count))
        elif settings.exclude and _excluded(settings.exclude, skey, dkey, proto, port, inside):
            left["excluded"].append((key, count))
        elif skey == dkey or (sep is not None and sep is dep):
            left["loopback"].append((key, count))
        elif sep is None and dep is None:
            left["outside_only"].append((key, count))
        elif proto in _PORTED and listening.get(key) is False:
            left["not_listening"].append((key, count))
        elif proto in _PORTED and low <= port <= high and listening.get(key) is None:
            left["ephemeral"].append((key, count))
        elif sep is not None and dep is not None:
            _count(pairs, (sep, dep, proto, port), key, count)
        else:
            if sep is None:
                outside[skey] = None
            if dep is None:
                outside[dkey] = None
            pending.append((skey, sep, dkey, dep, key, count))
    _aggregate_outside(outside, index, settings)
    for skey, sep, dkey, dep, key, count in pending:
        _count(pairs, (sep or (NET, outside[skey]), dep or (NET, outside[dkey]), key[2], key[3]), key, count)
    minimum = settings.min_count
    below = left["below_threshold"]
    for pair, entry in pairs.items():
        if entry[0] < minimum:
            below.append((pair, entry[0]))
        else:
            result.kept.append(Flow(pair[0], pair[1], pair[2], pair[3], entry[0]))


def _resolve(text, index, endpoints):
    """(address key, (HOST, name) or None for an outside address); (None, None) when ``text`` is no address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return (None, None)
    key = (address.version, int(address))
    name = index.host(key)
    return (key, None if name is None else endpoints[name])


def _count(pairs, pair, key, count):
    entry = pairs.get(pair)
    if entry is None:
        pairs[pair] = [count, [key]]
    else:
        entry[0] += count
        entry[1].append(key)


def _flow_order(flow):
    return (flow.src, flow.dst, flow.proto, -1 if flow.port is None else flow.port)


def item_text(item):
    """A left-out item as people read it: a record's flow (``10.0.2.1 -> 10.0.1.1 tcp/45000``) or an endpoint pair
    (``198.51.100.77 -> web-01 tcp/25``)."""
    src, dst, proto, port = item[:4]
    if isinstance(src, tuple):
        src, dst = src[1], dst[1]
    return "%s -> %s %s" % (src, dst, service_text(proto, port))


def largest(items, limit):
    """The ``limit`` items with the most connections (then in text order), as (text, connections)."""
    chosen = heapq.nsmallest(limit, items, key=lambda item: (-item[1], item_text(item[0])))
    return [(item_text(item), count) for item, count in chosen]


class _AddressIndex(object):
    """Fleet addresses by (version, integer); a host given a prefix is found by a scan of those few prefixes."""

    def __init__(self, fleet):
        self.exact = {}
        self.prefixes = []
        for name, host in fleet.hosts.items():
            for net in host.addresses:
                if net.size == 1:
                    self.exact[(net.version, int(net.ip))] = name
                else:
                    self.prefixes.append((net.version, net.first, net.last, name))

    def host(self, key):
        name = self.exact.get(key)
        if name is None and self.prefixes:
            for version, first, last, owner in self.prefixes:
                if version == key[0] and first <= key[1] <= last:
                    return owner
        return name

    def buckets(self, version, shift):
        """The prefixes of length (bits - ``shift``) that hold a host's single address, as their top bits."""
        return {value >> shift for v, value in self.exact if v == version}

    def overlaps_prefix(self, version, first, last):
        """Whether a host given as a prefix shares an address with ``first``-``last``."""
        return any(v == version and f <= last and first <= l for v, f, l, _name in self.prefixes)


def _excluded(exclude, skey, dkey, proto, port, inside):
    """Whether an exclusion entry matches the flow; ``inside`` caches (entry, address key) -> in its prefixes."""
    for position, (networks, ports) in enumerate(exclude):
        if ports is not None and not any(spec.matches(proto, port) for spec in ports):
            continue
        if networks is not None:
            hit = False
            for key in (skey, dkey):
                known = inside.get((position, key))
                if known is None:
                    known = inside[(position, key)] = netaddr.IPAddress(key[1], key[0]) in networks
                hit = hit or known
            if not hit:
                continue
        return True
    return False


def _aggregate_outside(outside, index, settings):
    """Fill ``outside`` (address key -> None) with the prefix text each outside address is proposed as."""
    buckets = {}
    for version, value in outside:
        bits = 32 if version == 4 else 128
        shift = bits - settings.outside_prefix[version]
        buckets.setdefault((version, value >> shift, shift), []).append((version, value))
    managed = {}
    for (version, top, shift), members in sorted(buckets.items()):
        if (version, shift) not in managed:
            managed[(version, shift)] = index.buckets(version, shift)
        if len(members) >= settings.outside_min_addresses and shift and top not in managed[(version, shift)] \
                and not index.overlaps_prefix(version, top << shift, ((top + 1) << shift) - 1):
            text = "%s/%d" % (_key_text((version, top << shift)), (32 if version == 4 else 128) - shift)
            for key in members:
                outside[key] = text
        else:
            for key in members:
                outside[key] = _key_text(key)


def group_of(fleet, endpoint, group_by):
    """The group an endpoint stands for: (TAGS, ((label, value), ...)), (HOST, name) or (NET, prefix)."""
    if endpoint[0] == NET:
        return endpoint
    tags = fleet.hosts[endpoint[1]].tags
    values = []
    for key in group_by:
        found = tags.get(key)
        if not found or len(found) != 1:
            return endpoint
        values.append((key, next(iter(found))))
    return (TAGS, tuple(values))


def _spec_order(spec):
    return (spec.proto, spec.first or 0)


def _merge_ports(services, gap):
    """PortSpecs for a set of (proto, port): consecutive ports (gaps up to ``gap``) form one range."""
    by_proto = {}
    for proto, port in services:
        by_proto.setdefault(proto, set()).add(port)
    specs = []
    for proto in sorted(by_proto):
        if proto == "icmp":
            specs.append(PortSpec("icmp", None, None))
            continue
        ports = sorted(by_proto[proto])
        first = last = ports[0]
        for port in ports[1:]:
            if port - last - 1 <= gap and proto != "proto":
                last = port
            else:
                specs.append(PortSpec(proto, first, last))
                first = last = port
        specs.append(PortSpec(proto, first, last))
    return tuple(specs)


def group_hosts(fleet, group, group_by, cache):
    """The host names a group selects (a NET group: none)."""
    if group in cache:
        return cache[group]
    if group[0] == HOST:
        found = frozenset((group[1],))
    elif group[0] == TAGS:
        wanted = dict(group[1])
        found = frozenset(n for n, h in fleet.hosts.items() if all(wanted[k] in h.tags.get(k, ()) for k in wanted))
    elif group[0] == HAS:
        found = frozenset(n for n, h in fleet.hosts.items() if all(k in h.tags for k in group_by))
    else:
        found = frozenset()
    cache[group] = found
    return found


def _build_rules(result, defaults, taken):
    fleet, settings = result.fleet, result.settings
    group_by = settings.group_by
    per_pair = {}
    for flow in result.kept:
        if flow.dst[0] == NET and defaults["egress"] == "allow":
            result.by_default.append(flow)
            continue
        key = (group_of(fleet, flow.src, group_by), group_of(fleet, flow.dst, group_by))
        per_pair.setdefault(key, []).append(flow)
    drafts = []
    for (src, dst), flows in per_pair.items():
        for spec in _merge_ports({(f.proto, f.port) for f in flows}, settings.port_gap):
            drafts.append(((src,), (dst,), spec, [f for f in flows if spec.matches(f.proto, f.port)]))
    cache = {}
    labelled = group_hosts(fleet, (HAS, ()), group_by, cache)
    drafts = _unite(drafts, 1, fleet, group_by, labelled, cache)
    drafts = _unite(drafts, 0, fleet, group_by, labelled, cache)
    by_sides = {}
    for sources, destinations, spec, flows in drafts:
        entry = by_sides.setdefault((sources, destinations), [[], []])
        entry[0].append(spec)
        entry[1].extend(flows)
    drafts = [(sides[0], sides[1], tuple(sorted(specs, key=_spec_order)), flows)
              for sides, (specs, flows) in by_sides.items()]
    named = []
    used_names = set()
    drafts.sort(key=lambda d: (_side_name(d[0]), _side_name(d[1]), [_spec_order(p) for p in d[2]]))
    for sources, destinations, ports, flows in drafts:
        name = _unique("%s-to-%s" % (_side_name(sources), _side_name(destinations)), used_names)
        named.append((name, sources, destinations, ports, sorted(flows, key=lambda f: (-f.count, f.text()))))
    rule_id = settings.first_id
    for name, sources, destinations, ports, flows in named:
        while rule_id in taken:
            rule_id += settings.id_step
        if rule_id > MAX_RULE_ID:
            raise MsegError("mseg_discover_first_id: %d rules do not fit from id %d in steps of %d below %d; lower "
                            "mseg_discover_first_id or mseg_discover_id_step" % (
                                len(named), settings.first_id, settings.id_step, MAX_RULE_ID + 1))
        result.rules.append(Proposed(rule_id, name, sources, destinations, ports, flows))
        taken.add(rule_id)
        rule_id += settings.id_step
    result.document = {"defaults": defaults, "rules": [rule_data(rule, group_by) for rule in result.rules]}
    result.yaml = render_yaml(result)


def _unite(drafts, side, fleet, group_by, labelled, cache):
    """Rules equal but for ``side`` (0 sources, 1 destinations) become one whose ``side`` is the union; a union of
    label groups that covers every labelled host (the other side's hosts aside) becomes (HAS,)."""
    other = 1 - side
    merged = {}
    for draft in drafts:
        key = (draft[other], draft[2])
        entry = merged.setdefault(key, [set(), []])
        entry[0].update(draft[side])
        entry[1].extend(draft[3])
    result = []
    for (fixed, ports), (groups, flows) in merged.items():
        groups = set(groups)
        if len([g for g in groups if g[0] != NET]) > 1 and all(g[0] != HAS for g in groups):
            covered = set()
            for group in groups:
                covered |= group_hosts(fleet, group, group_by, cache)
            own = set()
            for group in fixed:
                own |= group_hosts(fleet, group, group_by, cache)
            if labelled and labelled <= covered | own:
                inside = {g for g in groups if g[0] != NET and group_hosts(fleet, g, group_by, cache) <= labelled}
                groups = (groups - inside) | {(HAS, ())}
        ordered = tuple(sorted(groups, key=_group_order))
        result.append((ordered, fixed, ports, flows) if side == 0 else (fixed, ordered, ports, flows))
    return result


def _group_order(group):
    return ({HAS: 0, TAGS: 1, HOST: 2, NET: 3}[group[0]], str(group[1]))


def group_name(group):
    """How reports call a group: its labels (``role=web,env=prod``), a host name or a prefix."""
    if group[0] == HAS:
        return "every labelled host"
    if group[0] == TAGS:
        return ",".join("%s=%s" % pair for pair in group[1])
    return group[1]


def _name_part(group):
    """How a rule name calls a group: its label values (``web-prod``), ``all``, or a host name."""
    if group[0] == HAS:
        return "all"
    if group[0] == TAGS:
        return "-".join(value for _key, value in group[1])
    return group[1]


def _side_name(groups):
    nets = [g for g in groups if g[0] == NET]
    names = [_name_part(g) for g in groups if g[0] != NET]
    if nets:
        names.append("outside" if len(nets) > 1 else "net-" + nets[0][1])
    text = "-".join(names[:3]) + ("-and-%d-more" % (len(names) - 3) if len(names) > 3 else "")
    text = _NAME_CHARS.sub("-", text.lower()).strip("-") or "x"
    return text[:MAX_NAME].rstrip("-")


def _unique(name, used):
    candidate, number = name, 2
    while candidate in used:
        candidate = "%s-%d" % (name, number)
        number += 1
    used.add(candidate)
    return candidate


def selector_data(groups, group_by):
    """The selector of a side as policy data: label groups of one label share a mapping, hosts share one, prefixes
    share one."""
    mappings = []
    tag_values = {}
    hosts, nets = [], []
    for group in groups:
        if group[0] == HAS:
            mappings.append({"has": list(group_by)})
        elif group[0] == TAGS:
            if len(group_by) == 1:
                tag_values.setdefault(group[1][0][0], []).append(group[1][0][1])
            else:
                mappings.append({"tags": dict(group[1])})
        elif group[0] == HOST:
            hosts.append(group[1])
        else:
            nets.append(group[1])
    for key, values in tag_values.items():
        mappings.append({"tags": {key: values[0] if len(values) == 1 else sorted(values)}})
    if hosts:
        mappings.append({"hosts": sorted(hosts)})
    if nets:
        mappings.append({"cidr": sorted(nets, key=_net_order)})
    return mappings[0] if len(mappings) == 1 else mappings


def _net_order(text):
    net = ipaddress.ip_network(text)
    return (net.version, int(net.network_address), net.prefixlen)


def rule_data(rule, group_by):
    """A proposed rule as policy data (what parse_policy reads)."""
    return {"id": rule.id, "name": rule.name, "from": selector_data(rule.sources, group_by),
            "to": selector_data(rule.destinations, group_by), "ports": [str(p) for p in rule.ports]}


def _scalar(value):
    """A string as YAML writes it: plain when no YAML 1.1 reader can take it for anything but that string (a word
    that is not a boolean or null, an IPv4 address or prefix), else double-quoted (JSON's quoting is YAML's)."""
    text = str(value)
    if (_PLAIN_WORD.match(text) and text.lower() not in _YAML_WORDS) or _PLAIN_IPV4.match(text):
        return text
    return json.dumps(text)


def _flow_yaml(data):
    """Data as one line of YAML flow style (mappings keep their order, scalars quoted only where YAML needs it)."""
    if isinstance(data, dict):
        return "{%s}" % ", ".join("%s: %s" % (_scalar(k), _flow_yaml(v)) for k, v in data.items())
    if isinstance(data, list):
        return "[%s]" % ", ".join(_flow_yaml(v) for v in data)
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, int):
        return str(data)
    return _scalar(data)


def _comment(rule):
    flows = rule.flows
    shown = ", ".join("%s (%d)" % (f.text(), f.count) for f in flows[:MAX_COMMENT_FLOWS])
    more = "; and %d more" % (len(flows) - MAX_COMMENT_FLOWS) if len(flows) > MAX_COMMENT_FLOWS else ""
    return "    # %d flow%s, %d connection%s: %s%s" % (
        len(flows), "" if len(flows) == 1 else "s", rule.connections, "" if rule.connections == 1 else "s", shown, more)


def render_yaml(result):
    """The proposal as YAML for ``group_vars/all``: one comment per rule naming the flows that justify it."""
    settings = result.settings
    lines = [
        "# Proposed by mseg.fleet discovery from %d records: %d flows of at least %d connections, %d rules."
        % (result.records.records, len(result.kept), settings.min_count, len(result.rules)),
        "# Review it, roll it out in observe mode, read the observe report, then enforce (docs/discovery.md).",
        "mseg_policy:",
        "  defaults:",
    ]
    for direction in ("ingress", "egress"):
        lines.append("    %s: %s" % (direction, result.document["defaults"][direction]))
    if not result.rules:
        lines.append("  rules: []")
        return "\n".join(lines) + "\n"
    lines.append("  rules:")
    for rule, data in zip(result.rules, result.document["rules"]):
        lines.append(_comment(rule))
        lines.append("    - id: %d" % data["id"])
        lines.append("      name: %s" % _scalar(data["name"]))
        lines.append("      from: %s" % _flow_yaml(data["from"]))
        lines.append("      to: %s" % _flow_yaml(data["to"]))
        lines.append("      ports: %s" % _flow_yaml(data["ports"]))
    return "\n".join(lines) + "\n"
