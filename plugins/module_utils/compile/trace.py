# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Answer "would S reach D on tcp/5432, and which rule decides?" from the compiled plans, touching no host.

The evaluation walks the same ``HostPlan`` the renderer turns into nftables, in the same order (management, system
rules, log, deny, allow, default), so trace and the rendered rulesets cannot disagree; the integration tests prove it with
packets.
"""

from __future__ import annotations

from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import parse_port
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import tag_value

try:
    import netaddr
except ImportError:  # pragma: no cover - parse_policy reports it
    netaddr = None


class Endpoint(namedtuple("Endpoint", "label host addresses")):
    """A traced end: a managed host (``host`` set) or an outside address (``host`` None)."""

    __slots__ = ()


class Verdict(namedtuple("Verdict", "accepted rule_id rule_name reason audited logged limits", defaults=((),))):
    """One direction's decision: ``reason`` is management, system (``rule_name`` is the system rule's name), rule,
    default or bypass; ``audited`` is True when observe mode turned a drop into an accept; ``limits`` names the
    system connection limits a new connection of this flow counts against (beyond them enforce drops it)."""

    __slots__ = ()

    @property
    def decider(self):
        if self.reason == "rule":
            return "rule %d%s" % (self.rule_id, " (%s)" % self.rule_name if self.rule_name else "")
        if self.reason == "system":
            return "system rule %s" % self.rule_name
        if self.reason == "default":
            return "default"
        return self.reason


class Trace(namedtuple("Trace", "src dst port family src_address dst_address allowed decided_at egress ingress")):
    """The answer for one pair; ``decided_at`` is ``egress of X``, ``ingress of Y`` or None for a pass-through."""

    __slots__ = ()

    def to_data(self):
        def verdict(v, side):
            if v is None:
                return None
            return {"host": side, "accepted": v.accepted, "decided_by": v.decider, "rule": v.rule_id,
                    "audited": v.audited, "logged": list(v.logged), "limited_by": list(v.limits)}

        deciding = None
        if self.decided_at is not None:
            deciding = self.egress if self.decided_at.startswith("egress") else self.ingress
        return {
            "src": self.src.label,
            "dst": self.dst.label,
            "port": str(self.port),
            "family": "ipv%d" % self.family,
            "src_address": str(self.src_address),
            "dst_address": str(self.dst_address),
            "allowed": self.allowed,
            "decided_at": self.decided_at,
            "decided_by": deciding.decider if deciding else None,
            "rule": deciding.rule_id if deciding and deciding.reason == "rule" else None,
            "egress": verdict(self.egress, self.src.label if self.src.host else None),
            "ingress": verdict(self.ingress, self.dst.label if self.dst.host else None),
        }


def evaluate(plan, direction, peer, local, proto, port):
    """The verdict of one host's chain for a packet, exactly as the rendered ruleset decides it."""
    if plan.mode == "bypass":
        return Verdict(True, None, None, "bypass", False, ())
    if direction == "ingress":
        for entry in plan.management:
            if peer in entry.networks and (entry.ports is None or any(p.matches(proto, port) for p in entry.ports)):
                return Verdict(True, None, None, "management", False, ())
    verdict = _decide(plan, direction, peer, local, proto, port)
    if direction == "ingress":
        limits = tuple(limit.label for limit in plan.system_limits()
                       if any(p.matches(proto, port) for p in limit.ports))
        verdict = verdict._replace(limits=limits)
    return verdict


def _decide(plan, direction, peer, local, proto, port):
    """The verdict after management: system rules, log, deny, allow, default."""
    for item in plan.system_rules(direction):
        if item.matches(peer, local, proto, port):
            return Verdict(True, None, item.rule.name, "system", False, ())
    logged = []
    observe = plan.mode == "observe"
    for item in plan.rules(direction):
        if not item.matches(peer, local, proto, port):
            continue
        if item.action == "log":
            logged.append(item.rule.id)
        elif item.action == "deny":
            return Verdict(observe, item.rule.id, item.rule.name, "rule", observe, tuple(logged))
        else:
            return Verdict(True, item.rule.id, item.rule.name, "rule", False, tuple(logged))
    if plan.policy.defaults[direction] == "allow":
        return Verdict(True, None, None, "default", False, tuple(logged))
    return Verdict(observe, None, None, "default", observe, tuple(logged))


def trace_pair(fleet, src, dst, port_spec):
    """Trace every address family the two ends share; returns a list of Trace (IPv4 first)."""
    proto, port = port_spec.proto, port_spec.first
    results = []
    for version in (4, 6):
        src_address = _first(src.addresses, version)
        dst_address = _first(dst.addresses, version)
        if src_address is None or dst_address is None:
            continue
        egress = ingress = None
        if src.host is not None:
            egress = evaluate(fleet.plans[src.host], "egress", dst_address, src_address, proto, port)
        if dst.host is not None:
            ingress = evaluate(fleet.plans[dst.host], "ingress", src_address, dst_address, proto, port)
        side = _deciding_side(egress, ingress)
        decided_at = None if side is None else "%s of %s" % (side, src.label if side == "egress" else dst.label)
        allowed = (egress is None or egress.accepted) and (ingress is None or ingress.accepted)
        results.append(Trace(src, dst, port_spec, version, src_address, dst_address, allowed, decided_at,
                             egress, ingress))
    return results


def _deciding_side(egress, ingress):
    """Where a pair is decided: the first side that drops; else the first that only audits (observe mode: enforce
    would drop there); else the receiver's ingress (or the sender's egress when the receiver is outside)."""
    present = [(name, v) for name, v in (("egress", egress), ("ingress", ingress)) if v is not None]
    for name, verdict in present:
        if not verdict.accepted:
            return name
    for name, verdict in present:
        if verdict.audited:
            return name
    return present[-1][0] if present else None


def _first(addresses, version):
    for net in addresses:
        if net.version == version:
            return net.ip if net.size == 1 else net.network
    return None


def resolve_endpoints(fleet, expression, what):
    """Hosts named by a host name, a group, a tag expression ``k=v[,k=v]`` or an IP address outside the fleet."""
    if not isinstance(expression, str) or not expression.strip():
        raise MsegError("%s: give a host, a group, a tag expression such as role=web,env=prod, or an address" % what)
    expression = expression.strip()
    if expression == "all":
        return [_host_endpoint(fleet, n) for n in sorted(fleet.hosts)]
    if expression in fleet.hosts:
        return [_host_endpoint(fleet, expression)]
    if "=" in expression:
        wanted = []
        for part in expression.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise MsegError("%s: '%s' is not a tag expression; write key=value[,key=value], e.g. role=web,env=prod"
                                % (what, expression))
            wanted.append((key.strip(), tag_value(value.strip())))
        names = [n for n, h in sorted(fleet.hosts.items()) if all(v in h.tags.get(k, ()) for k, v in wanted)]
        if not names:
            raise MsegError("%s: no host carries the tags %s" % (what, expression))
        return [_host_endpoint(fleet, n) for n in names]
    names = sorted(n for n, h in fleet.hosts.items() if expression in h.groups)
    if names:
        return [_host_endpoint(fleet, n) for n in names]
    try:
        address = netaddr.IPAddress(expression)
    except (netaddr.AddrFormatError, ValueError):
        raise MsegError("%s: '%s' is neither a host, a group, a tag expression (key=value) nor an IP address"
                        % (what, expression))
    for name, host in sorted(fleet.hosts.items()):
        if any(address in net for net in host.addresses):
            return [_host_endpoint(fleet, name)]
    return [Endpoint(str(address), None, (netaddr.IPNetwork(address),))]


def _host_endpoint(fleet, name):
    return Endpoint(name, name, fleet.hosts[name].addresses)


def parse_trace_port(text):
    spec, reason = parse_port(text)
    if spec is None:
        raise MsegError("mseg_trace_port: %r %s" % (text, reason))
    if not spec.single:
        raise MsegError("mseg_trace_port: %r must name one port, e.g. tcp/5432 or udp/53 (or icmp, or an IP "
                        "protocol such as vrrp)" % (text,))
    return spec


def trace(fleet, src_expression, dst_expression, port_text):
    """Every (src, dst) pair of the two expressions, traced; self-pairs are skipped (loopback is always open)."""
    problems = []
    port = sources = destinations = None
    for step in ("port", "src", "dst"):
        try:
            if step == "port":
                port = parse_trace_port(port_text)
            elif step == "src":
                sources = resolve_endpoints(fleet, src_expression, "mseg_trace_src")
            else:
                destinations = resolve_endpoints(fleet, dst_expression, "mseg_trace_dst")
        except MsegError as exc:
            problems.extend(exc.messages)
    if problems:
        raise MsegError(problems)
    results = []
    for src in sources:
        for dst in destinations:
            if src.host is not None and src.host == dst.host:
                continue
            results.extend(trace_pair(fleet, src, dst, port))
    return results


def format_table(results, fleet):
    """Human-readable lines, one per traced pair and family."""
    lines = []
    for item in results:
        modes = "%s/%s" % (fleet.plans[item.src.host].mode if item.src.host else "-",
                           fleet.plans[item.dst.host].mode if item.dst.host else "-")
        data = item.to_data()
        verdict = "ALLOW" if item.allowed else "DENY "
        audit = ""
        for side in (item.egress, item.ingress):
            if side is not None and side.audited:
                audit = "  (observe: enforce would drop)"
        if item.ingress is not None and item.ingress.limits:
            audit += "  (new connections under %s)" % ", ".join(item.ingress.limits)
        lines.append("%s  %-14s -> %-14s %-10s %-5s %-24s by %-26s modes %s%s" % (
            verdict, item.src.label, item.dst.label, data["port"], data["family"], data["decided_at"] or "-",
            data["decided_by"] or "-", modes, audit))
    return lines


def _cell(item):
    """A matrix cell: +ID allowed by a rule, +def by the default, +mgt by management, +sys by a system rule, xID / x
    denied,
    ~ID / ~ allowed only because the deciding side observes (enforce would drop)."""
    side = None
    if item.decided_at is not None:
        side = item.egress if item.decided_at.startswith("egress") else item.ingress
    if side is None:
        return "+"
    if side.reason == "bypass":
        return "+byp"
    if side.reason == "management":
        return "+mgt"
    if side.reason == "system":
        return "+sys"
    suffix = "%d" % side.rule_id if side.reason == "rule" else ("def" if item.allowed and not side.audited else "")
    if side.audited:
        return "~" + suffix
    return ("+" if item.allowed else "x") + suffix


def format_matrix(results, port_text):
    """A source x destination grid for one port (IPv4 where both ends have it, else IPv6)."""
    cells = {}
    for item in results:
        cells.setdefault((item.src.label, item.dst.label), _cell(item))
    sources = sorted({src for src, _dst in cells})
    destinations = sorted({dst for _src, dst in cells})
    width = max([len(s) for s in sources] + [len(port_text)])
    lines = ["%s  %s" % (port_text.ljust(width), " ".join("%5d" % (i + 1) for i in range(len(destinations))))]
    for src in sources:
        row = ["." if src == dst else cells.get((src, dst), "?") for dst in destinations]
        lines.append("%s  %s" % (src.ljust(width), " ".join(cell.rjust(5) for cell in row)))
    lines.append("columns: " + ", ".join("%d=%s" % (i + 1, d) for i, d in enumerate(destinations)))
    return lines
