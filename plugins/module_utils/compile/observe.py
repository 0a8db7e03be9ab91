# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Summarise the agents' drop logs (the observe report).

In observe mode every packet enforce would drop is logged ``[MSEG-AUDIT] ID=<id>`` and accepted, so the summary of
those events per rule and per pair of labels is exactly what switching to enforce would break. The events are the
lines the agents' drop log wrote to their runtime logs from the ruleset's NFLOG records (``agent.droplog``), never
kernel log lines, which any local user can forge. The drop log's heartbeats say who was collecting and when, so
the report tells "no events" from "nobody was collecting".
"""

from __future__ import annotations

import csv
import io

from ansible_collections.mseg.fleet.plugins.module_utils.agent.droplog import Heartbeat, parse_runtime_line


def _who(fleet, address, by_address):
    name = by_address.get(address)
    if name is None:
        return address, "%s (outside the inventory)" % address
    tags = fleet.hosts[name].tags
    label = ",".join("%s=%s" % (k, "|".join(sorted(v))) for k, v in sorted(tags.items())) or "(no labels)"
    return name, label


def summarise(fleet, lines, kinds=("AUDIT",)):
    """Count the logged packets per rule and per (source labels, destination labels, port), from the lines of the
    hosts' drop logs (the agent's runtime log, or mseg-droplog's on push-mode hosts; other lines are ignored);
    ``collecting`` lists each host whose drop log was running, from its first to its last heartbeat in the input."""
    by_address = {}
    for name, host in fleet.hosts.items():
        for net in host.addresses:
            by_address[str(net.ip)] = name
    names = {rule.id: rule.name for rule in fleet.policy.rules}
    per_rule = {}
    per_pair = {}
    flows = {}
    collecting = {}
    for line in lines:
        parsed = parse_runtime_line(line)
        if parsed is None:
            continue
        at, event = parsed
        if isinstance(event, Heartbeat):
            seen = collecting.setdefault(event.host, {"host": event.host, "from": at, "to": at, "heartbeats": 0})
            seen["from"], seen["to"] = min(seen["from"], at), max(seen["to"], at)
            seen["heartbeats"] += 1
            continue
        if event.kind not in kinds:
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
    return {"packets": sum(flows.values()), "flows": len(flows), "rules": rules, "pairs": pairs,
            "collecting": [collecting[name] for name in sorted(collecting)]}


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
    if not summary["collecting"] and not summary["packets"]:
        return ["nobody was collecting: no drop log heartbeat in the input, so no events says nothing (the agent "
                "collects on its hosts with agent_droplog: nflog, mseg-droplog.service on push-mode hosts: the "
                "policy role installs it with policy_droplog: true)"]
    lines = ["%d packet(s) in %d flow(s) would be dropped under enforce" % (summary["packets"], summary["flows"])]
    for seen in summary["collecting"]:
        lines.append("  collected on %s from %s to %s" % (seen["host"], seen["from"], seen["to"]))
    for rule in summary["rules"]:
        lines.append("  rule %-5d %-24s %6d packet(s) %4d flow(s)" % (
            rule["rule"], rule["name"] or "", rule["packets"], rule["flows"]))
    for pair in summary["pairs"]:
        lines.append("  %s -> %s %s: %d packet(s) by rule %d (%s)" % (
            pair["src"], pair["dst"], pair["port"], pair["packets"], pair["rule"], ", ".join(pair["hosts"][:3]) +
            (" ..." if len(pair["hosts"]) > 3 else "")))
    return lines
