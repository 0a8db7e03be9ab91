# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Summarise the kernel's ``[MSEG-AUDIT]`` / ``[MSEG-DROP]`` / ``[MSEG-LOG]`` lines (the observe report).

In observe mode every packet enforce would drop is logged ``[MSEG-AUDIT] ID=<id>`` and accepted, so the summary of
those lines per rule and per pair of labels is exactly what switching to enforce would break.
"""

from __future__ import annotations

import csv
import io

from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import parse_line


def _who(fleet, address, by_address):
    name = by_address.get(address)
    if name is None:
        return address, "%s (outside the inventory)" % address
    tags = fleet.hosts[name].tags
    label = ",".join("%s=%s" % (k, "|".join(sorted(v))) for k, v in sorted(tags.items())) or "(no labels)"
    return name, label


def summarise(fleet, lines, kinds=("AUDIT",)):
    """Count the logged packets per rule and per (source labels, destination labels, port)."""
    by_address = {}
    for name, host in fleet.hosts.items():
        for net in host.addresses:
            by_address[str(net.ip)] = name
    names = {rule.id: rule.name for rule in fleet.policy.rules}
    per_rule = {}
    per_pair = {}
    flows = {}
    for line in lines:
        event = parse_line(line)
        if event is None or event.kind not in kinds:
            continue
        src_host, src_label = _who(fleet, event.src, by_address)
        dst_host, dst_label = _who(fleet, event.dst, by_address)
        rule = per_rule.setdefault(event.rule, {"rule": event.rule, "name": names.get(event.rule) or (
            "default" if event.rule == 0 else None), "packets": 0, "flows": set()})
        rule["packets"] += 1
        flow = (src_host, dst_host, event.port)
        rule["flows"].add(flow)
        key = (src_label, dst_label, event.port, event.rule)
        pair = per_pair.setdefault(key, {"src": src_label, "dst": dst_label, "port": event.port,
                                         "rule": event.rule, "direction": event.direction, "packets": 0,
                                         "hosts": set()})
        pair["packets"] += 1
        pair["hosts"].add("%s -> %s" % (src_host, dst_host))
        flows[flow] = flows.get(flow, 0) + 1
    rules = []
    for item in sorted(per_rule.values(), key=lambda r: (-r["packets"], r["rule"])):
        rules.append(dict(item, flows=len(item["flows"])))
    pairs = []
    for item in sorted(per_pair.values(), key=lambda p: (-p["packets"], p["src"], p["dst"], p["port"])):
        pairs.append(dict(item, hosts=sorted(item["hosts"])))
    return {"packets": sum(flows.values()), "flows": len(flows), "rules": rules, "pairs": pairs}


def to_csv(summary):
    """The per-pair summary as CSV (one row per source labels, destination labels, port and rule)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["src", "dst", "port", "rule", "direction", "packets", "hosts"])
    for pair in summary["pairs"]:
        writer.writerow([pair["src"], pair["dst"], pair["port"], pair["rule"], pair["direction"], pair["packets"],
                         " ".join(pair["hosts"])])
    return out.getvalue()


def format_summary(summary):
    lines = ["%d packet(s) in %d flow(s) would be dropped under enforce" % (summary["packets"], summary["flows"])]
    for rule in summary["rules"]:
        lines.append("  rule %-5d %-24s %6d packet(s) %4d flow(s)" % (
            rule["rule"], rule["name"] or "", rule["packets"], rule["flows"]))
    for pair in summary["pairs"]:
        lines.append("  %s -> %s %s: %d packet(s) by rule %d (%s)" % (
            pair["src"], pair["dst"], pair["port"], pair["packets"], pair["rule"], ", ".join(pair["hosts"][:3]) +
            (" ..." if len(pair["hosts"]) > 3 else "")))
    return lines
