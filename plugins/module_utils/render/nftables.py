# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render a ``HostPlan`` as the host's ``inet mseg`` table: the nftables backend (DESIGN section 5).

Runs on the controller only (it needs netaddr, which managed hosts lack); the plan it reads is backend-neutral
(``compile/fleet.py``), and every name it writes comes from the wire contract (``common/contract.py``).

Chain ``input`` (and its mirror ``output``) evaluates, in order: conntrack established/related accept, invalid
drop, loopback accept, ICMPv6 neighbour discovery accept, management accept (input only), system connection limits
(input only: a new connection to a limited port from a source already holding N drops; observe only counts it),
system rules accept,
``log`` rules, ``deny`` rules, ``allow`` rules, then the direction's default. Every policy rule counts into its
named counter ``rule_<id>_<in|out>`` and carries the comment ``ID=<id>``; every system rule (the product's own
flows, compile/system.py) counts into ``sys_<role>_<flow>_<in|out>`` and carries ``SYS=<role>.<flow>``, right after
management, so an operator reading the chain sees them together and apart from the policy.

Logging is rate-limited, and since ``limit`` is a match that stops its rule when exceeded, a log never shares a rule
with a verdict: a matching deny rule jumps to a chain ``deny_<id>_<dir>`` holding a rate-limited log rule followed by
an unconditional counted drop. In observe mode the same chain logs ``[MSEG-AUDIT]`` and accepts instead.
"""

from __future__ import annotations

import functools
import heapq
import weakref

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import IP_PROTOCOL
from ansible_collections.mseg.fleet.plugins.module_utils.nft import model as nft
from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_table
from ansible_collections.mseg.fleet.plugins.module_utils.nft.table import new_table

try:
    import netaddr
except ImportError:  # pragma: no cover - compile_fleet reports it before anything is rendered
    netaddr = None

ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
# Protocols by number: nft resolves names through /etc/protocols, which minimal hosts do not have.
_FAMILY = {4: ("ip", "ipv4", "ipv4_addr", 1), 6: ("ip6", "ipv6", "ipv6_addr", 58)}
_L4PROTO = {"tcp": 6, "udp": 17}
_DIRECTION = {
    # direction: (peer field, local field, interface key)
    "ingress": ("saddr", "daddr", "iif"),
    "egress": ("daddr", "saddr", "oif"),
}


def element(cidr):
    """An address or prefix as nft lists it in a set: a single address without its /32 or /128 (the recorded
    listing is compared with what was rendered, so the two must agree)."""
    text = str(cidr)
    if cidr.prefixlen == (32 if cidr.version == 4 else 128):
        return text[:text.rindex("/")]
    return text


# AddressSet -> {version: nft.Elements}: a set shared by many hosts is formatted once; an entry goes with its set.
_ELEMENTS = weakref.WeakKeyDictionary()


def _elements(address_set, version):
    """The prefixes of one family of ``address_set`` as nft set elements, formatted once per set."""
    derived = _ELEMENTS.get(address_set)
    if derived is None:
        derived = _ELEMENTS[address_set] = {}
    elements = derived.get(version)
    if elements is None:
        elements = derived[version] = nft.Elements([element(cidr) for cidr in address_set.family(version)])
    return elements


def _set_elements(table, name, address_set, version):
    """Declare the interval set ``name`` holding one family of ``address_set``; returns ``@name``."""
    _proto, _nfproto, addr_type, _icmp = _FAMILY[version]
    if name not in table.sets:
        table.add_set(nft.Set(name, addr_type, ("interval",), _elements(address_set, version)))
    return "@" + name


def _inline(addresses):
    return addresses[0] if len(addresses) == 1 else "{ %s }" % ", ".join(addresses)


@functools.lru_cache(maxsize=4096)
def port_matches(ports, version):
    """The layer-4 matches for a port list: one per protocol, or ("",) when every protocol matches.

    Many hosts receive the same rule: the matches of a port list are computed once (ports are hashable tuples).
    """
    if ports is None:
        return ("",)
    matches = []
    for proto in sorted({p.proto for p in ports}):
        specs = [p for p in ports if p.proto == proto]
        if proto == "icmp":
            matches.append("meta l4proto %d" % _FAMILY[version][3])
        elif proto == IP_PROTOCOL:
            items = ["%d" % p.first if p.first == p.last else "%d-%d" % (p.first, p.last) for p in specs]
            matches.append("meta l4proto %s" % _inline(items))
        elif any(p.first is None for p in specs):
            matches.append("meta l4proto %d" % _L4PROTO[proto])
        else:
            items = ["%d" % p.first if p.first == p.last else "%d-%d" % (p.first, p.last) for p in specs]
            matches.append("%s dport %s" % (proto, _inline(items)))
    return tuple(matches)


def _log(kind, rule_id):
    """The two log statements of an event: the kernel log line people read, and the same prefix to the kind's NFLOG
    group, the only channel machines read (a kernel log line can be forged by any local user; an NFLOG record
    cannot). Both sit behind the same rate limit."""
    prefix = nft.quote(contract.log_prefix(kind, rule_id))
    return "log prefix %s log group %d prefix %s" % (prefix, contract.NFLOG_GROUP[kind], prefix)


def _verdict_pair(table, chain, match, kind, rule_id, counter, verdict, comment):
    """A rate-limited log followed by an unconditional counted verdict: the limit can never skip the verdict."""
    table.counter(counter)
    lead = match + " " if match else ""
    chain.add('%s%s %s' % (lead, contract.LOG_LIMIT, _log(kind, rule_id)), comment)
    chain.add('%scounter name %s %s' % (lead, nft.quote(counter), verdict), comment)


def _direction(table, plan, direction):
    peer_field, local_field, iface = _DIRECTION[direction]
    chain = table.chain(contract.BASE_CHAIN[direction], type_="filter", hook=contract.HOOK[direction])
    observe = plan.mode == "observe"
    chain.add("ct state established,related accept")
    invalid = contract.invalid_counter(direction)
    if observe:
        _verdict_pair(table, chain, "ct state invalid", "AUDIT", 0, invalid, "accept", None)
    else:
        table.counter(invalid)
        chain.add("ct state invalid counter name %s drop" % nft.quote(invalid))
    chain.add('%s "lo" accept' % iface)
    chain.add("icmpv6 type { %s } accept" % ND_TYPES)
    if direction == "ingress":
        _management(table, chain, plan)
        for limit in plan.system_limits():
            _system_limit(table, chain, limit, observe)
    for item in plan.system_rules(direction):
        _system_rule(table, chain, item, direction, peer_field)
    for run in _allow_runs(plan.rules(direction)):
        if len(run) > 1:
            _allow_map(table, chain, run, direction, peer_field)
        else:
            _plan_rule(table, chain, run[0], direction, peer_field, local_field, observe)
    default_counter = contract.default_counter(direction)
    if plan.defaults[direction] == "allow":
        table.counter(default_counter)
        chain.add("counter name %s accept" % nft.quote(default_counter), "ID=0")
    elif observe:
        _verdict_pair(table, chain, "", "AUDIT", 0, default_counter, "accept", "ID=0")
    else:
        _verdict_pair(table, chain, "", "DROP", 0, default_counter, "drop", "ID=0")


def _management(table, chain, plan):
    table.counter(contract.MGMT_COUNTER)
    counted = "counter name %s accept" % nft.quote(contract.MGMT_COUNTER)
    for version in (4, 6):
        chain.add("%s saddr . tcp dport @%s %s" % (_FAMILY[version][0], contract.MGMT_AUTO_SET[version], counted),
                  "management (controller)")
    for position, entry in enumerate(plan.management):
        for version in (4, 6):
            if not entry.networks.family(version):
                continue
            proto = _FAMILY[version][0]
            peer = "%s saddr %s" % (proto, _set_elements(table, contract.mgmt_set(position, version),
                                                         entry.networks, version))
            for l4 in port_matches(entry.ports, version):
                chain.add(" ".join(p for p in (l4, peer, counted) if p), "management")


def _system_rule(table, chain, item, direction, peer_field):
    """A system rule: exactly its declared peers and ports, accepted and counted in every mode but bypass."""
    name = item.rule.name
    counter = contract.system_counter(name, direction)
    table.counter(counter)
    counted = "counter name %s accept" % nft.quote(counter)
    for version in (4, 6):
        if not item.peers.family(version):
            continue
        peer = "%s %s %s" % (_FAMILY[version][0], peer_field,
                             _set_elements(table, contract.system_set(name, direction, version), item.peers, version))
        for l4 in port_matches(item.ports, version):
            chain.add(" ".join(p for p in (l4, peer, counted) if p), contract.system_comment(name))


def _system_limit(table, chain, limit, observe):
    """A per-source connection limit: each new connection to the limited ports adds its source address to a dynamic
    set whose element counts that source's connections in conntrack (``ct count``, kept by the kernel, removed when
    it reaches zero); beyond ``per_source`` the connection is dropped and counted. Observe counts it and drops
    nothing: observe passes every flow, and the counter says what enforce would drop."""
    counter = contract.limit_counter(limit.name)
    table.counter(counter)
    verdict = "" if observe else " drop"
    for version in (4, 6):
        name = contract.limit_set(limit.name, version)
        table.add_set(nft.Set(name, _FAMILY[version][2], ("dynamic",)))
        for l4 in port_matches(limit.ports, version):
            chain.add("%s ct state new add @%s { %s saddr ct count over %d } counter name %s%s" % (
                l4, name, _FAMILY[version][0], limit.per_source, nft.quote(counter), verdict),
                contract.system_comment(limit.name))


def _plan_rule(table, chain, item, direction, peer_field, local_field, observe):
    rule_id = item.rule.id
    comment = "ID=%d" % rule_id
    counter = contract.rule_counter(rule_id, direction)
    table.counter(counter)
    for version in (4, 6):
        proto, nfproto = _FAMILY[version][0], _FAMILY[version][1]
        if not item.peers.family(version):
            continue
        local = ""
        if item.local is not None:
            own = _elements(item.local, version).items
            if not own:
                continue
            local = "%s %s %s" % (proto, local_field, _inline(own))
        if item.peers.full_v4 if version == 4 else item.peers.full_v6:
            peer = "" if local else "meta nfproto %s" % nfproto
        else:
            set_name = contract.rule_set(rule_id, direction, version)
            peer = "%s %s %s" % (proto, peer_field, _set_elements(table, set_name, item.peers, version))
        for l4 in port_matches(item.ports, version):
            match = " ".join(p for p in (l4, peer, local) if p)
            if item.action == "allow":
                chain.add("%s counter name %s accept" % (match, nft.quote(counter)), comment)
            elif item.action == "log":
                chain.add("%s counter name %s %s %s" % (match, nft.quote(counter), contract.LOG_LIMIT,
                                                        _log("LOG", rule_id)), comment)
            else:
                target = contract.deny_chain(rule_id, direction)
                if not any(c.name == target for c in table.chains):
                    verdict = table.chain(target)
                    if observe:
                        _verdict_pair(table, verdict, "", "AUDIT", rule_id, counter, "accept", comment)
                    else:
                        _verdict_pair(table, verdict, "", "DROP", rule_id, counter, "drop", comment)
                chain.add("%s jump %s" % (match, target), comment)


def _mergeable(item):
    return item.action == "allow" and item.local is None and not (item.peers.full_v4 or item.peers.full_v6)


def _allow_runs(items):
    """The plan's rules in order, consecutive allow rules with the same ports (and no local match) grouped."""
    runs = []
    for item in items:
        last = runs[-1][-1] if runs else None
        if last is not None and _mergeable(item) and _mergeable(last) and item.ports == last.ports:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _first_match(run, version):
    """``(element, item)`` pairs, disjoint: each address belongs to the first rule of ``run`` that names it."""
    spans = sorted((cidr.first, cidr.last, order, text) for order, item in enumerate(run)
                   for cidr, text in zip(item.peers.family(version), _elements(item.peers, version).items))
    if all(left[1] < right[0] for left, right in zip(spans, spans[1:])):
        return [(text, run[order]) for _first, _last, order, text in spans]
    points = sorted({edge for first, last, _order, _net in spans for edge in (first, last + 1)})
    active = []
    pieces = []
    index = 0
    for start, end in zip(points, points[1:]):
        while index < len(spans) and spans[index][0] <= start:
            heapq.heappush(active, (spans[index][2], spans[index][1]))
            index += 1
        while active and active[0][1] < start:
            heapq.heappop(active)
        if not active:
            continue
        order = active[0][0]
        if pieces and pieces[-1][2] == order and pieces[-1][1] == start - 1:
            pieces[-1][1] = end - 1
        else:
            pieces.append([start, end - 1, order])
    return [(element(net), run[order]) for first, last, order in pieces
            for net in netaddr.iprange_to_cidrs(netaddr.IPAddress(first, version), netaddr.IPAddress(last, version))]


def _allow_map(table, chain, run, direction, peer_field):
    """Consecutive allow rules with the same ports as one verdict-map lookup instead of one set lookup per rule.

    A new connection then costs one lookup whatever the number of rules (a linear walk of R set lookups costs
    microseconds per packet at R = 1,000). Each address maps to the first rule of the run that names it, so
    first-match semantics and every rule's counter are what the rules in sequence would give.
    """
    head = run[0].rule.id
    for item in run:
        rule_id = item.rule.id
        counter = contract.rule_counter(rule_id, direction)
        table.counter(counter)
        table.chain(contract.allow_chain(rule_id, direction)).add(
            "counter name %s accept" % nft.quote(counter), "ID=%d" % rule_id)
    ids = "ID=" + ",".join("%d" % item.rule.id for item in run)
    for version in (4, 6):
        proto, _nfproto, addr_type, _icmp = _FAMILY[version]
        elements = ["%s : jump %s" % (text, contract.allow_chain(item.rule.id, direction))
                    for text, item in _first_match(run, version)]
        if not elements:
            continue
        name = contract.allow_map(head, direction, version)
        table.add_set(nft.Map(name, "%s : verdict" % addr_type, ("interval",), elements))
        for l4 in port_matches(run[0].ports, version):
            match = " ".join(p for p in (l4, "%s %s vmap @%s" % (proto, peer_field, name)) if p)
            chain.add(match, ids if len(ids) <= 120 else "ID=%d..%d" % (head, run[-1].rule.id))


def build_table(plan):
    """The ``inet mseg`` table for one host plan."""
    if plan.mode == "bypass":
        return bypass_table()
    table = new_table()
    for direction in contract.DIRECTIONS:
        table.chain(contract.BASE_CHAIN[direction], type_="filter", hook=contract.HOOK[direction])
    _direction(table, plan, "ingress")
    _direction(table, plan, "egress")
    return table


def render_plan(plan):
    """The complete ``nft -f`` file for a host and the table's statistics."""
    table = build_table(plan)
    header = [
        "mseg.fleet ruleset for %s: mode=%s policy=%s" % (plan.name, plan.mode, plan.policy.digest[:16]),
        "Generated from the fleet policy; edits on the host are drift and will be replaced.",
    ]
    return nft.replace_script(table, header), table.stats()
