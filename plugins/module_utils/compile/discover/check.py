# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery end to end: propose, then prove the proposal with the engine's own trace (docs/discovery.md).

``discover`` compiles the current policy (or none) for the fleet, proposes a policy (propose.py), compiles the
proposal with the real compiler, and evaluates every observed address pair with ``trace.evaluate`` on both plans,
every host judged as in ``enforce`` (an observe host's audit counts as a drop, a bypass host decides nothing):

- coverage: every flow at or above the threshold must be allowed by the proposal; a flow that is not is listed
  (it would be a defect of the proposer, and the tests hold it to none);
- the diff against the current policy: the flows it would drop, and its allow rules that no observed flow used;
- the label pairs the proposal keeps closed.

Cost: one trace evaluation per distinct observed address pair and policy (each is a walk of the two hosts' plan
rules), plus two compiles; never hosts x hosts.
"""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.propose import (
    HAS, HOST, LEFT_OUT, TAGS, group_hosts, group_name, group_of, item_text, largest, propose,
)
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import paused_gc
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet
from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import evaluate

try:
    import netaddr
except ImportError:  # pragma: no cover - parse_policy reports it
    netaddr = None

MAX_LISTED = 1000
MAX_GROUPS = 1000
MAX_EXAMPLES = 20


def _enforcing(raw_hosts):
    """The hosts as compile_fleet reads them, each in enforce: the check judges the policy, not today's modes."""
    return {name: dict(raw, mode="enforce") for name, raw in raw_hosts.items()}


class Verdicts(object):
    """Judges observed address pairs against one compiled fleet; remembers which rules accepted something."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.used = set()
        self._addresses = {}

    def _ip(self, text):
        found = self._addresses.get(text)
        if found is None:
            found = self._addresses[text] = netaddr.IPAddress(text)
        return found

    def judge(self, pair, record):
        """(allowed, what decided a drop or None) for one record key (src, dst, proto, port) summed into the
        endpoint pair ``pair`` (src, dst, proto, port)."""
        src, dst = self._ip(record[0]), self._ip(record[1])
        source, target, proto, port = pair
        egress = ingress = None
        if source[0] == HOST:
            egress = evaluate(self.fleet.plans[source[1]], "egress", dst, src, proto, port)
        if target[0] == HOST:
            ingress = evaluate(self.fleet.plans[target[1]], "ingress", src, dst, proto, port)
        dropped = None
        for side, verdict in (("egress of %s" % source[1], egress), ("ingress of %s" % target[1], ingress)):
            if verdict is None:
                continue
            if verdict.reason == "rule" and verdict.accepted:
                self.used.add(verdict.rule_id)
            if dropped is None and not verdict.accepted:
                dropped = "%s by %s" % (side, verdict.decider)
        return dropped is None, dropped


class Report(object):
    """What ``discover`` found: ``proposal`` (propose.Discovery), ``uncovered`` (flows the proposal would drop,
    with where), ``current`` (None, or a dict: ``would_drop`` and ``unused_rules``), ``closed`` (label pairs the
    proposal opens nothing between; None when there are too many groups to list), ``proposed_fleet`` (the proposal
    compiled)."""

    def __init__(self, proposal, proposed_fleet, uncovered, current, closed):
        self.proposal = proposal
        self.proposed_fleet = proposed_fleet
        self.uncovered = uncovered
        self.current = current
        self.closed = closed

    def to_data(self):
        """A JSON-ready summary (the report's ``discovery.json``)."""
        proposal = self.proposal
        settings = proposal.settings
        group_by = settings.group_by
        rule_of = {}
        for rule in proposal.rules:
            for flow in rule.flows:
                rule_of[flow] = rule.id
        return {
            "records": {"read": proposal.records.records, "malformed": proposal.records.bad,
                        "problems": list(proposal.records.problems)},
            "settings": {"group_by": list(group_by), "min_count": settings.min_count,
                         "outside_prefix_v4": settings.outside_prefix[4],
                         "outside_prefix_v6": settings.outside_prefix[6],
                         "outside_min_addresses": settings.outside_min_addresses,
                         "ephemeral_ports": "%d-%d" % settings.ephemeral, "port_gap": settings.port_gap},
            "left_out": {reason: {"flows": len(items), "connections": sum(c for _t, c in items),
                                  "examples": [{"flow": t, "connections": c} for t, c in largest(items, MAX_EXAMPLES)]}
                         for reason, items in ((r, proposal.left_out[r]) for r in LEFT_OUT)},
            "flows": [{"src": f.src[1], "dst": f.dst[1], "service": f.service, "connections": f.count,
                       "src_group": group_name(group_of(proposal.fleet, f.src, group_by)),
                       "dst_group": group_name(group_of(proposal.fleet, f.dst, group_by)),
                       "rule": rule_of.get(f)} for f in proposal.kept],
            "allowed_by_egress_default": [f.text() for f in proposal.by_default],
            "rules": [dict(data, flows=len(rule.flows), connections=rule.connections)
                      for rule, data in zip(proposal.rules, proposal.document["rules"])],
            "coverage": {"flows": len(proposal.kept), "uncovered": [{"flow": text, "dropped_at": where}
                                                                    for text, where in self.uncovered]},
            "current": self.current,
            "closed_pairs": ({"count": len(self.closed), "pairs": self.closed[:MAX_LISTED]} if self.closed is not None
                             else {"count": None, "pairs": [], "not_listed": "more than %d label groups" % MAX_GROUPS}),
        }


def discover(flows, raw_hosts, current_policy=None, settings=None, raw_system=None):
    """Propose a policy from ``flows`` (records.Flows) for the fleet ``raw_hosts`` (compile_fleet's input), check
    it, and diff it against ``current_policy`` (a policy document, or None when there is none yet)."""
    hosts = _enforcing(raw_hosts)
    current = compile_fleet(current_policy if current_policy is not None else {"rules": []}, hosts, raw_system)
    proposal = propose(flows, current, settings, current=current_policy is not None)
    proposed = compile_fleet(proposal.document, hosts, raw_system)
    mine = Verdicts(proposed)
    theirs = Verdicts(current) if current_policy is not None else None
    uncovered = []
    would_drop = []
    minimum = proposal.settings.min_count
    with paused_gc():
        for pair, (count, records) in proposal.pairs.items():
            kept = count >= minimum
            for record in records if kept else ():
                allowed, where = mine.judge(pair, record)
                if not allowed:
                    uncovered.append((item_text(pair), where))
                    break
            for record in records if theirs is not None else ():
                allowed, where = theirs.judge(pair, record)
                if not allowed and kept:
                    would_drop.append({"flow": item_text(pair), "connections": count, "dropped_at": where})
                    break
    uncovered.sort()
    diff = None
    if theirs is not None:
        unused = [{"id": rule.id, "name": rule.name} for rule in current.policy.rules
                  if rule.action == "allow" and rule.id not in theirs.used]
        diff = {"would_drop": sorted(would_drop, key=lambda d: d["flow"]), "unused_rules": unused}
    return Report(proposal, proposed, uncovered, diff, closed_pairs(proposal))


def closed_pairs(proposal):
    """``src -> dst`` for every ordered pair of the fleet's label groups between which no proposed rule opens
    anything (a group's pair with itself only when it has two hosts or more); None when the fleet has more than
    MAX_GROUPS groups (hosts without the ``group_by`` labels are a group each), as the list grows with their square."""
    fleet, group_by = proposal.fleet, proposal.settings.group_by
    cache = {}
    groups = sorted({group_of(fleet, (HOST, name), group_by) for name in fleet.hosts}, key=group_name)
    if len(groups) > MAX_GROUPS:
        return None
    labelled = group_hosts(fleet, (HAS, ()), group_by, cache)
    everyone = {g for g in groups if group_hosts(fleet, g, group_by, cache) <= labelled}

    def expand(side):
        found = set()
        for group in side:
            if group[0] == HAS:
                found |= everyone
            elif group[0] in (TAGS, HOST):
                found.add(group)  # an outside prefix is no label group
        return found

    opened = set()
    for rule in proposal.rules:
        for src in expand(rule.sources):
            for dst in expand(rule.destinations):
                opened.add((src, dst))
    closed = []
    for src in groups:
        for dst in groups:
            if src == dst and len(group_hosts(fleet, src, group_by, cache)) < 2:
                continue
            if (src, dst) not in opened:
                closed.append("%s -> %s" % (group_name(src), group_name(dst)))
    return closed
