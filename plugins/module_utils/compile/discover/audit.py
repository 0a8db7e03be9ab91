# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flow records from the audit records of hosts in observe mode (docs/discovery.md, "Audit records").

An audit record is a connection the current policy would drop in enforce: exactly what discovery must not miss.
The hosts return the drop log's ``Policy Audit: ...`` lines of their window (``host.auditlog``); here each line is
judged again by the drop log's strict parser and kept only inside its host's window. The ruleset logs a connection
when it is new (established packets are accepted before any audit), so a line is one connection attempt, its
``src`` the client and ``dst`` the server; the receiver's listening state is unknown.

The same connection can be audited twice (on the client's egress and the server's ingress) and is also in
the conntrack records, since observe mode accepts it. So a flow's count is the largest of the hosts' audit counts
and of the collector's count, never their sum: the audit adds the flows the collector did not keep (a host whose
collector failed or reached ``max_flows``) and raises the count of those it under-counted. Cost: one dictionary
update per line.
"""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.agent.droplog import parse_runtime_line
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import Event
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import MAX_REPORTED, Flows


def read_audit(lines_by_host, windows):
    """``(flows, stats)`` from each host's audit lines, kept from ``windows[host] = (first, last)`` (the runtime
    log's UTC time text, both included). ``flows`` holds the largest count per flow over the hosts; ``stats``
    counts the lines used, outside the window, and not an audit record (with the first few named)."""
    flows = Flows()
    stats = {"lines": 0, "used": 0, "outside_window": 0, "rejected": 0, "problems": [], "no_window": []}
    for host in sorted(lines_by_host):
        lines = lines_by_host[host] or []
        stats["lines"] += len(lines)
        window = windows.get(host)
        if window is None:
            stats["no_window"].append(host)
            continue
        own = Flows()
        for number, line in enumerate(lines, 1):
            parsed = parse_runtime_line(line) if isinstance(line, str) else None
            if parsed is None or not isinstance(parsed[1], Event) or parsed[1].kind != "AUDIT":
                stats["rejected"] += 1
                if len(stats["problems"]) < MAX_REPORTED:
                    stats["problems"].append("audit records of %s line %d: not an audit record of the drop log: %r"
                                             % (host, number, str(line)[:120]))
                continue
            at, event = parsed
            if not window[0] <= at <= window[1]:
                stats["outside_window"] += 1
                continue
            own.add(("audit records of %s line %d", host, number), event.src, event.dst, event.proto,
                    event.dport if event.dport is not None else "", 1, None)
        stats["used"] += own.records - own.bad
        stats["rejected"] += own.bad
        stats["problems"].extend(own.problems[:max(0, MAX_REPORTED - len(stats["problems"]))])
        for key, count in own.counts.items():
            if count > flows.counts.get(key, 0):
                flows.counts[key] = count
    flows.records = stats["used"]
    return flows, stats


def add_audit(flows, audit):
    """Raise each flow of ``flows`` to its audit count (a flow only audited is added); returns ``(added, raised)``:
    the flows the collectors had not recorded, and those they recorded fewer times than the audit."""
    added = raised = 0
    for key, count in audit.counts.items():
        seen = flows.counts.get(key, 0)
        if count > seen:
            if seen:
                raised += 1
            else:
                added += 1
            flows.counts[key] = count
    return added, raised
