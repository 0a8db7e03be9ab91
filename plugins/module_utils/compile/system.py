# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""System rules: the flows the product itself needs, declared by the role that needs them, compiled with the policy.

A role declares each flow once (``DECLARED``): its name from the wire contract, which side sends, which side
receives, and the protocol and port, which may name one of the role's settings. The fleet supplies the rest from
the inventory (``parse_system``): the role's hosts (for the controller role, the inventory group
``contract.CONTROLLER_GROUP``), its settings, its virtual IP. A system rule is exactly that flow between exactly
those addresses: nothing in the policy widens it, and nothing but the declaration and the role's own settings
changes it.

System rules are evaluated after management and before the policy's log, deny and allow rules (docs/policy.md): a
policy deny written for the workloads must not cut an agent off from its controller (which would freeze every later
policy, the fix included) nor split the controller tier's VRRP into two masters.

A role may also declare a per-source connection limit on its own ports (``Limit``): new connections to those ports
from one source address beyond N concurrent ones (N a role setting, 0 = no limit) are dropped, before management
and system accepts could let them in. It guards what the application cannot: nginx counts a connection only once
its request header is read, so a client without a certificate can hold any number of half-open TLS handshakes.
The limit counts every source, fleet or not; in observe mode it only counts what enforce would drop (its counter)
and drops nothing, as observe passes every flow.

Cost: one address set per declared side, built once and shared by every host that carries the rule; hosts + rules.
"""

from __future__ import annotations

import string
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import normalise_ports, parse_port
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import _describe, parse_network

try:
    import netaddr
except ImportError:  # pragma: no cover - parse_policy reports it
    netaddr = None


class Flow(namedtuple("Flow", "name sender receiver port")):
    """A declared flow. ``sender`` and ``receiver`` name a side: ``replicas`` (the role's hosts), ``service`` (the
    role's hosts and its virtual IP), ``fleet`` (every managed host), ``operators`` (the prefixes of the role's
    operators setting). ``port`` is a policy port, ``{setting}`` replaced by the role's setting."""

    __slots__ = ()


class Limit(namedtuple("Limit", "name ports per_source")):
    """A declared per-source connection limit: ``ports`` are policy ports (TCP), ``per_source`` names the setting
    that holds N; each may name settings as ``{setting}``."""

    __slots__ = ()


# role -> (its inventory group, its settings as {setting: inventory variable}, its flows, its limits)
DECLARED = {
    "controller": (
        contract.CONTROLLER_GROUP,
        {"agent_port": "controller_agent_port", "operator_port": "controller_operator_port",
         "operators": "controller_operator_allow", "vip": "controller_vip",
         "conn_limit": "controller_conn_limit_per_source"},
        (
            Flow("controller.vrrp", "replicas", "replicas", "vrrp"),
            Flow("controller.agents", "fleet", "service", "tcp/{agent_port}"),
            Flow("controller.operators", "operators", "service", "tcp/{operator_port}"),
        ),
        (
            Limit("controller.connlimit", ("tcp/{agent_port}", "tcp/{operator_port}"), "conn_limit"),
        ),
    ),
}
# The largest per-source limit: ct count is a 32-bit count, and a limit above this limits nothing.
MAX_PER_SOURCE = 1000000


class SystemLimit(namedtuple("SystemLimit", "name hosts ports per_source")):
    """A compiled connection limit: on ``hosts`` (names), new TCP connections to ``ports`` (PortSpecs) from one
    source address beyond ``per_source`` concurrent ones are dropped."""

    __slots__ = ()

    @property
    def label(self):
        return "system limit %s (%d connections per source)" % (self.name, self.per_source)

    def to_data(self):
        return {"name": self.name, "hosts": sorted(self.hosts), "ports": [str(p) for p in self.ports],
                "per_source": self.per_source}


class SystemRule(namedtuple("SystemRule", "name senders receivers sources destinations ports")):
    """A compiled system rule: ``senders`` and ``receivers`` are the managed hosts on each side (frozensets of
    names), ``sources`` and ``destinations`` the AddressSets they match, ``ports`` a tuple of PortSpec."""

    __slots__ = ()
    id = None  # a PlanRule's ``id``: system rules have names, not policy ids

    @property
    def label(self):
        return "system rule %s" % self.name

    def to_data(self):
        return {"name": self.name, "from": self.sources.to_data(), "to": self.destinations.to_data(),
                "from_hosts": sorted(self.senders), "to_hosts": sorted(self.receivers),
                "ports": [str(p) for p in self.ports]}


def parse_system(raw, hosts, address_set):
    """Compile the roles' declared flows for ``hosts`` (name -> Host). ``raw`` maps a role to what the inventory
    says of it: ``{"hosts": [names], "settings": {setting: value}}`` (a role absent or without hosts declares
    nothing). ``address_set(key, ipset)`` builds a shared AddressSet. Returns (rules, limits, problems, warnings)."""
    problems, warnings, rules, limits = [], [], [], []
    for role in sorted(raw or {}):
        if role not in DECLARED:
            problems.append("system rules: unknown role %s; roles that declare flows are %s"
                            % (_describe(role), ", ".join(sorted(DECLARED))))
            continue
        group, variables, flows, declared_limits = DECLARED[role]
        given = raw[role] or {}
        members = sorted(set(given.get("hosts") or ()))
        missing = [name for name in members if name not in hosts]
        if missing:
            warnings.append("system rules: %s hosts %s are not in the inventory" % (role, ", ".join(missing)))
        members = [name for name in members if name in hosts]
        if not members:
            continue
        settings = given.get("settings") or {}
        before = len(problems)
        sides = _sides(problems, role, variables, settings, members, hosts)
        if len(problems) != before:
            continue
        for flow in flows:
            spec, reason = parse_port(flow.port.format(**settings))
            if spec is None:
                problems.append("system rule %s: port %s %s; check %s" % (
                    flow.name, flow.port.format(**settings), reason, _named(flow.port, variables)))
                continue
            senders, sources = sides[flow.sender]
            receivers, destinations = sides[flow.receiver]
            if not sources or not destinations:
                continue
            rules.append(SystemRule(flow.name, senders, receivers,
                                    address_set("sys.%s.from" % flow.name, sources),
                                    address_set("sys.%s.to" % flow.name, destinations), normalise_ports([spec])))
        for limit in declared_limits:
            compiled = _limit(problems, limit, variables, settings, members)
            if compiled is not None:
                limits.append(compiled)
    return rules, limits, problems, warnings


def _limit(problems, limit, variables, settings, members):
    """The SystemLimit of ``limit`` on the role's hosts, or None when its setting is 0 (off) or wrong."""
    variable = variables[limit.per_source]
    value = settings.get(limit.per_source)
    if value is None or value == 0:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PER_SOURCE:
        problems.append("system limit %s: %s %s is not a number of connections; set it to an integer from 1 to "
                        "%d, or 0 for no limit" % (limit.name, variable, _describe(value), MAX_PER_SOURCE))
        return None
    if value == 0:
        return None
    specs = []
    for port in limit.ports:
        spec, reason = parse_port(port.format(**settings))
        if spec is None or spec.proto != "tcp" or spec.first is None:
            problems.append("system limit %s: port %s %s; check %s" % (
                limit.name, port.format(**settings), reason or "is not a TCP port", _named(port, variables)))
            return None
        specs.append(spec)
    return SystemLimit(limit.name, frozenset(members), normalise_ports(specs), value)


def _named(template, variables):
    """The inventory variables a port template such as ``tcp/{agent_port}`` reads, for a message."""
    fields = sorted(variables[field] for _text, field, _spec, _conv in string.Formatter().parse(template) if field)
    return ", ".join(fields) or "the role's declaration"


def _sides(problems, role, variables, settings, members, hosts):
    """side name -> (managed hosts on that side, IPSet of its addresses)."""
    def addresses(names):
        return netaddr.IPSet(net for name in names for net in hosts[name].addresses)

    replicas = (frozenset(members), addresses(members))
    service = replicas
    vip = settings.get("vip")
    if vip:
        net, reason = parse_network(vip)
        if net is None:
            problems.append("system rules: %s %s %s" % (variables["vip"], _describe(vip), reason))
        else:
            service = (replicas[0], replicas[1] | netaddr.IPSet([net]))
    operators = netaddr.IPSet()
    raw_operators = settings.get("operators") or []
    if not isinstance(raw_operators, list):
        problems.append("system rules: %s must be a list of prefixes; got %s" % (
            variables["operators"], _describe(raw_operators)))
        raw_operators = []
    for index, item in enumerate(raw_operators):
        net, reason = parse_network(item)
        if net is None:
            problems.append("system rules: %s[%d]: %s %s" % (variables["operators"], index, _describe(item), reason))
        else:
            operators.add(net)
    return {"replicas": replicas, "service": service, "fleet": (frozenset(hosts), addresses(hosts)),
            "operators": (frozenset(), operators)}


def role_settings(role, lookup):
    """``{setting: value}`` of ``role``, each read with ``lookup(inventory variable)`` (None when unset)."""
    return {setting: lookup(variable) for setting, variable in DECLARED[role][1].items()}
