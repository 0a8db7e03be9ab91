# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile one policy for a whole fleet into a ``HostPlan`` per host (DESIGN sections 3 and 4).

Hosts are indexed by label, group and address once; each rule's selectors are resolved against those indexes once;
each rule's address sets are built once and shared by every host the rule reaches. The work therefore grows with
hosts + rules (+ the size of the result), never hosts x hosts.
"""

from __future__ import annotations

import bisect
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import (
    _describe, _parse_cidrs, _parse_ports, _unknown_keys, parse_network, parse_policy, tag_pairs,
)
from ansible_collections.mseg.fleet.plugins.module_utils.compile.system import parse_system

try:
    import netaddr
except ImportError:  # pragma: no cover - parse_policy reports it
    netaddr = None

MODES = ("observe", "enforce", "bypass")
DEFAULT_MODE = "observe"
ACTION_ORDER = {"log": 0, "deny": 1, "allow": 2}
MANAGEMENT_KEYS = ("cidr", "ports")


class AddressSet(object):
    """An immutable set of addresses, merged into the fewest prefixes, shared by every plan that uses it.

    ``family(version)`` lists its prefixes of one address family as ``netaddr.IPNetwork``, sorted; ``full_v4`` and
    ``full_v6`` say it holds every address of that family. A backend writes the prefixes in its own syntax, and may
    keep what it derives from a set keyed by the set itself (hashable by identity, weakly referenceable), so that
    the work is done once however many hosts share the set.
    """

    __slots__ = ("key", "ipset", "v4", "v6", "full_v4", "full_v6", "__weakref__")

    def __init__(self, key, ipset):
        self.key = key
        self.ipset = ipset
        v4, v6 = [], []
        for cidr in ipset.iter_cidrs():
            (v4 if cidr.version == 4 else v6).append(cidr)
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)
        self.full_v4 = len(v4) == 1 and v4[0].prefixlen == 0
        self.full_v6 = len(v6) == 1 and v6[0].prefixlen == 0

    def family(self, version):
        return self.v4 if version == 4 else self.v6

    def to_data(self):
        """The prefixes as text, IPv4 first: a single address without its length (``plan.json``)."""
        return [address_text(cidr) for cidr in self.v4 + self.v6]

    def __contains__(self, address):
        return address in self.ipset

    def __bool__(self):
        return bool(self.v4 or self.v6)

    def __repr__(self):
        return "AddressSet(%r, %r)" % (self.key, self.to_data())


def address_text(cidr):
    """An address or prefix as people read it: a single address is written without its /32 or /128."""
    if cidr.prefixlen == (32 if cidr.version == 4 else 128):
        return str(cidr.ip)
    return str(cidr)


class Host(namedtuple("Host", "name tags groups addresses mode management")):
    """A managed host: ``tags`` maps label to a frozenset of values, ``addresses`` is a tuple of IPNetwork."""

    __slots__ = ()


class ManagementEntry(namedtuple("ManagementEntry", "networks ports")):
    """Always allowed in: ``networks`` is an AddressSet, ``ports`` a tuple of PortSpec or None for everything."""

    __slots__ = ()


class PlanRule(namedtuple("PlanRule", "rule action peers local ports")):
    """One policy rule as it applies to one direction of one host.

    ``peers`` holds the remote addresses (sources on ingress, destinations on egress); ``local`` is None when the
    rule applies to every address of the host, else an AddressSet of the host's own addresses it applies to.
    """

    __slots__ = ()

    @property
    def id(self):
        return self.rule.id

    def matches(self, peer, local, proto, port):
        if peer not in self.peers:
            return False
        if self.local is not None and local not in self.local:
            return False
        if self.ports is None:
            return True
        return any(spec.matches(proto, port) for spec in self.ports)


class HostPlan(namedtuple("HostPlan", "host policy mode management ingress egress system")):
    """Everything a host enforces, whatever the backend: its addresses, its mode, its management entries, its
    system rules and its policy rules per direction (each a PlanRule: rule, action, peers, local, ports; a system
    rule's ``rule`` is a SystemRule), its system connection limits (SystemLimit) and the default of each direction.

    It holds data only (addresses as ``netaddr`` networks, ports as PortSpec): each backend's renderer
    (``module_utils/render/``) writes it in its own syntax, and trace evaluates it.
    """

    __slots__ = ()

    @property
    def name(self):
        return self.host.name

    @property
    def addresses(self):
        return self.host.addresses

    @property
    def defaults(self):
        """``{"ingress": "deny"|"allow", "egress": ...}``: what a packet no rule decides gets."""
        return self.policy.defaults

    def rules(self, direction):
        return self.ingress if direction == "ingress" else self.egress

    def system_rules(self, direction):
        """The system rules of ``direction`` (compile/system.py), evaluated before the policy's rules."""
        return self.system[direction] if self.system else ()

    def system_limits(self):
        """The per-source connection limits on this host's ports (compile/system.py), checked before any accept
        but management's."""
        return self.system.get("limits", ()) if self.system else ()


def merge_tags(group_layers, host_layer, where):
    """Merge ``mseg_tags`` layers: groups are united per label (a host in web and db carries role web and db);
    the host's own tags replace a label's values. Returns (tags, problems)."""
    problems = []
    merged = {}
    for group, layer in group_layers:
        for key, values in _tag_layer(problems, "%s: mseg_tags of group %s" % (where, group), layer):
            merged[key] = merged.get(key, frozenset()) | values
    for key, values in _tag_layer(problems, "%s: mseg_tags" % where, host_layer):
        merged[key] = values
    return merged, problems


def _tag_layer(problems, where, layer):
    if layer is None:
        return []
    if not isinstance(layer, dict):
        problems.append("%s: expected a mapping of label to value, e.g. {role: web, env: prod}; got %s"
                        % (where, _describe(layer)))
        return []
    return tag_pairs(problems, where, layer)


def _parse_addresses(problems, name, raw):
    where = "host %s" % name
    given = raw.get("addresses")
    if given is None:
        ansible_host = raw.get("ansible_host")
        net, _reason = parse_network(ansible_host) if isinstance(ansible_host, str) and "/" not in ansible_host \
            else (None, None)
        if net is None:
            problems.append("%s: no address: set mseg_addresses (a list of its IPv4/IPv6 addresses) or make "
                            "ansible_host an IP address (it is %s)" % (where, _describe(ansible_host)))
            return ()
        return (net,)
    return _parse_cidrs(problems, where + ": mseg_addresses", given, "list the host's addresses, e.g. [10.0.1.5]")


class _ManagementCache(object):
    """Hosts usually share one management list from group_vars: parse each distinct list once."""

    def __init__(self):
        self._cache = {}

    def parse(self, problems, name, raw):
        if raw is None:
            return ()
        key = repr(raw)
        cached = self._cache.get(key)
        if cached is not None:
            entries, messages = cached
        else:
            messages = []
            entries = self._parse(messages, raw)
            self._cache[key] = (entries, messages)
        problems.extend("host %s: %s" % (name, m) for m in messages)
        return entries

    @staticmethod
    def _parse(problems, raw):
        if not isinstance(raw, list):
            problems.append("mseg_management: expected a list of {cidr: ..., ports: [...]}; got %s" % _describe(raw))
            return ()
        entries = []
        for index, item in enumerate(raw):
            where = "mseg_management[%d]" % index
            if not isinstance(item, dict):
                problems.append("%s: expected a mapping {cidr: 10.0.0.0/24, ports: [tcp/22]}; got %s"
                                % (where, _describe(item)))
                continue
            before = len(problems)
            _unknown_keys(problems, where, item, MANAGEMENT_KEYS)
            if "cidr" not in item:
                problems.append("%s: cidr: missing; give the prefix the operators connect from" % where)
                continue
            cidrs = _parse_cidrs(problems, where + ".cidr", item["cidr"])
            ports = _parse_ports(problems, where + ".ports", item["ports"]) if "ports" in item else None
            if len(problems) == before:
                entries.append(ManagementEntry(AddressSet("management", netaddr.IPSet(cidrs)), ports))
        return tuple(entries)


def parse_hosts(raw_hosts):
    """Turn ``{name: {tags, groups, addresses, ansible_host, mode, management}}`` into Hosts; collect problems."""
    problems = []
    hosts = {}
    management = _ManagementCache()
    if not isinstance(raw_hosts, dict):
        raise MsegError("the fleet must be a mapping of inventory hostname to host variables")
    for name in sorted(raw_hosts):
        raw = raw_hosts[name]
        tags = raw.get("tags") or {}
        if isinstance(tags, dict) and all(isinstance(v, frozenset) for v in tags.values()):
            clean_tags = dict(tags)  # already merged by merge_tags
        else:
            clean_tags = dict(_tag_layer(problems, "host %s: mseg_tags" % name, tags))
        mode = raw.get("mode")
        if mode is None:
            mode = DEFAULT_MODE
        if mode not in MODES:
            problems.append("host %s: mseg_mode: %s is not one of %s" % (name, _describe(mode), ", ".join(MODES)))
        addresses = _parse_addresses(problems, name, raw)
        entries = management.parse(problems, name, raw.get("management"))
        hosts[name] = Host(name, clean_tags, frozenset(raw.get("groups") or ()), addresses, mode, entries)
    return hosts, problems


class FleetIndex(object):
    """Hosts indexed once by label value, label presence, group and address."""

    def __init__(self, hosts):
        self.hosts = hosts
        self.names = frozenset(hosts)
        self.by_tag = {}
        self.by_label = {}
        self.by_group = {}
        spans = []
        for name, host in hosts.items():
            for key, values in host.tags.items():
                self.by_label.setdefault(key, set()).add(name)
                per_value = self.by_tag.setdefault(key, {})
                for value in values:
                    per_value.setdefault(value, set()).add(name)
            for group in host.groups:
                self.by_group.setdefault(group, set()).add(name)
            for net in host.addresses:
                spans.append((net.version, net.first, net.last, name, net))
        spans.sort(key=lambda s: (s[0], s[1], s[2], s[3]))
        self._spans = spans
        self._starts = [(s[0], s[1]) for s in spans]

    def _tagged(self, key, values):
        per_value = self.by_tag.get(key, {})
        found = set()
        for value in values:
            found |= per_value.get(value, set())
        return found

    def select_hosts(self, selector):
        """The hosts a mapping with host keys selects (every key must hold)."""
        candidates = None

        def narrow(found):
            return set(found) if candidates is None else candidates & found

        for key, values in selector.tags:
            candidates = narrow(self._tagged(key, values))
        for key in selector.has:
            candidates = narrow(self.by_label.get(key, set()))
        if selector.groups:
            found = set()
            for group in selector.groups:
                found |= self.by_group.get(group, set())
            candidates = narrow(found)
        if selector.hosts:
            candidates = narrow(selector.hosts & self.names)
        if candidates is None:
            candidates = set(self.names)
        for key, values in selector.not_tags:
            candidates -= self._tagged(key, values)
        return candidates

    def addresses_within(self, network):
        """(host, own address) pairs whose address lies inside ``network``."""
        lo = bisect.bisect_left(self._starts, (network.version, network.first))
        hi = bisect.bisect_right(self._starts, (network.version, network.last))
        return [(s[3], s[4]) for s in self._spans[lo:hi] if s[2] <= network.last]


class _Side(namedtuple("_Side", "addresses members partial")):
    """A resolved selector: every address it matches; hosts matched entirely; hosts matched by some addresses."""

    __slots__ = ()


def _resolve(index, rule, which, selectors, warnings):
    members = set()
    networks = []
    partial = {}
    for position, selector in enumerate(selectors):
        where = "%s: %s" % (rule.label, which) + ("[%d]" % position if len(selectors) > 1 else "")
        if selector.any:
            networks.extend((netaddr.IPNetwork("0.0.0.0/0"), netaddr.IPNetwork("::/0")))
            members.update(index.names)
            continue
        if selector.cidrs:
            networks.extend(selector.cidrs)
            for net in selector.cidrs:
                for name, own in index.addresses_within(net):
                    partial.setdefault(name, set()).add(own)
            continue
        found = index.select_hosts(selector)
        missing = sorted(selector.hosts - index.names)
        if missing:
            warnings.append("%s: hosts %s are not in the inventory" % (where, ", ".join(missing)))
        if not found:
            warnings.append("%s: selects no host in the inventory (%s)" % (where, _selector_text(selector)))
        members |= found
    for name in list(partial):
        if name in members or set(partial[name]) >= set(index.hosts[name].addresses):
            members.add(name)
            del partial[name]
    for name in members:
        networks.extend(index.hosts[name].addresses)
    return _Side(netaddr.IPSet(networks), members, partial)


def _selector_text(selector):
    parts = []
    for key, value in sorted(selector.to_data().items()):
        parts.append("%s=%s" % (key, value))
    return ", ".join(parts)


class FleetPlan(object):
    """The result of compiling a policy for a fleet: a HostPlan per host, and the warnings."""

    def __init__(self, policy, hosts, plans, warnings, system=(), limits=()):
        self.policy = policy
        self.hosts = hosts
        self.plans = plans
        self.warnings = warnings
        self.system = system
        self.limits = limits

    def to_data(self, names=None):
        """A JSON-ready description of the plans; address sets are listed once and referred to by key."""
        names = sorted(self.plans) if names is None else sorted(names)
        sets = {}

        def ref(address_set):
            if address_set is None:
                return None
            if address_set.key not in sets:
                sets[address_set.key] = address_set.to_data()
            return address_set.key

        def system_data(item):
            return {"system_rule": item.rule.name, "peers": ref(item.peers),
                    "ports": [str(p) for p in item.ports]}

        def rule_data(item):
            return {
                "rule": item.rule.id,
                "action": item.action,
                "peers": ref(item.peers),
                "local": None if item.local is None else item.local.to_data(),
                "ports": None if item.ports is None else [str(p) for p in item.ports],
            }

        hosts = {}
        for name in names:
            plan = self.plans[name]
            host = plan.host
            hosts[name] = {
                "mode": plan.mode,
                "addresses": [address_text(a) for a in host.addresses],
                "groups": sorted(host.groups),
                "tags": {k: sorted(v) for k, v in sorted(host.tags.items())},
                "management": [{"cidr": e.networks.to_data(),
                                "ports": None if e.ports is None else [str(p) for p in e.ports]}
                               for e in plan.management],
                "system": {d: [system_data(r) for r in plan.system_rules(d)] for d in ("ingress", "egress")},
                "system_limits": [{"system_limit": limit.name, "ports": [str(p) for p in limit.ports],
                                   "per_source": limit.per_source} for limit in plan.system_limits()],
                "ingress": [rule_data(r) for r in plan.ingress],
                "egress": [rule_data(r) for r in plan.egress],
            }
        return {
            "policy": {
                "digest": self.policy.digest,
                "defaults": self.policy.defaults,
                "rules": [r.to_data() for r in self.policy.rules],
            },
            "system_rules": [rule.to_data() for rule in self.system],
            "system_limits": [limit.to_data() for limit in self.limits],
            "address_sets": dict(sorted(sets.items())),
            "hosts": hosts,
            "warnings": list(self.warnings),
        }


def compile_fleet(policy_document, raw_hosts, raw_system=None):
    """Validate the policy, the hosts and the roles' system flows (``raw_system``, see compile/system.py), then
    compile a plan for every host. Raises MsegError with every problem."""
    problems = []
    policy = None
    try:
        policy = parse_policy(policy_document)
    except MsegError as exc:
        problems.extend(exc.messages)
    hosts, host_problems = parse_hosts(raw_hosts)
    problems.extend(host_problems)
    system = limits = ()
    warnings = []
    if not host_problems:
        system, limits, system_problems, warnings = parse_system(raw_system, hosts, AddressSet)
        problems.extend(system_problems)
    if problems:
        raise MsegError(problems)
    index = FleetIndex(hosts)
    system_in = {name: [] for name in hosts}
    system_out = {name: [] for name in hosts}
    for rule in system:
        for name in rule.receivers:
            system_in[name].append(PlanRule(rule, "allow", rule.sources, None, rule.ports))
        for name in rule.senders:
            system_out[name].append(PlanRule(rule, "allow", rule.destinations, None, rule.ports))
    ingress = {name: [] for name in hosts}
    egress = {name: [] for name in hosts}
    for rule in policy.rules:
        sources = _resolve(index, rule, "from", rule.sources, warnings)
        destinations = _resolve(index, rule, "to", rule.destinations, warnings)
        if not sources.addresses or not destinations.addresses:
            continue
        peers_in = AddressSet("r%d.from" % rule.id, sources.addresses)
        peers_out = AddressSet("r%d.to" % rule.id, destinations.addresses)
        _attach(ingress, rule, peers_in, destinations, "in")
        _attach(egress, rule, peers_out, sources, "out")
    plans = {}
    for name, host in hosts.items():
        plans[name] = HostPlan(
            host, policy, host.mode, host.management,
            tuple(sorted(ingress[name], key=_plan_order)),
            tuple(sorted(egress[name], key=_plan_order)),
            {"ingress": tuple(system_in[name]), "egress": tuple(system_out[name]),
             "limits": tuple(limit for limit in limits if name in limit.hosts)},
        )
    return FleetPlan(policy, hosts, plans, warnings, tuple(system), tuple(limits))


def _attach(per_host, rule, peers, side, direction):
    shared = PlanRule(rule, rule.action, peers, None, rule.ports)
    for name in side.members:
        per_host[name].append(shared)
    for name, own in side.partial.items():
        local = AddressSet("r%d.%s.%s.local" % (rule.id, direction, name), netaddr.IPSet(own))
        per_host[name].append(PlanRule(rule, rule.action, peers, local, rule.ports))


def _plan_order(item):
    return (ACTION_ORDER[item.action], item.rule.id)
