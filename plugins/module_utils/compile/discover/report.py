# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery's report files: what a person reviews before the proposal goes anywhere (docs/discovery.md).

``write_report`` writes into one directory:

| file | what |
| --- | --- |
| ``proposal.yml`` | the proposed policy, ready for ``group_vars/all`` |
| ``discovery.json`` | everything: settings, what was left out and why, flows, rules, coverage, diff, closed pairs |
| ``flows.csv`` | one line per endpoint pair kept: src, dst, service, connections, their groups, the rule |
| ``map.csv`` | one line per pair of label groups: the services between them, flows, connections, rules |
| ``map.dot`` | the same map as a Graphviz graph |
| ``map.svg`` | that graph drawn by Graphviz ``dot``, when it is installed (Debian package ``graphviz``) |

Cost: linear in the kept flows; ``dot`` lays out one node per label group, not per host.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess

from ansible_collections.mseg.fleet.plugins.module_utils.common.files import write_atomic

FLOW_FIELDS = ("src", "dst", "service", "connections", "src_group", "dst_group", "rule")
MAP_FIELDS = ("src_group", "dst_group", "services", "flows", "connections", "rules")
DOT_TIMEOUT = 120


def map_rows(data):
    """The map: one row per (source group, destination group) of the kept flows, from ``Report.to_data()``."""
    edges = {}
    for flow in data["flows"]:
        edge = edges.setdefault((flow["src_group"], flow["dst_group"]),
                                {"services": set(), "flows": 0, "connections": 0, "rules": set()})
        edge["services"].add(flow["service"])
        edge["flows"] += 1
        edge["connections"] += flow["connections"]
        edge["rules"].add("egress default" if flow["rule"] is None else str(flow["rule"]))
    return [{"src_group": src, "dst_group": dst, "services": " ".join(sorted(edge["services"])),
             "flows": edge["flows"], "connections": edge["connections"], "rules": " ".join(sorted(edge["rules"]))}
            for (src, dst), edge in sorted(edges.items())]


def to_csv(rows, fields):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
    return out.getvalue()


def _quote(text):
    return '"%s"' % str(text).replace("\\", "\\\\").replace('"', '\\"')


def to_dot(rows):
    """The map as a Graphviz digraph: a node per label group, an edge per pair with its services and connections."""
    nodes = sorted({row["src_group"] for row in rows} | {row["dst_group"] for row in rows})
    lines = ["digraph discovery {", "  rankdir=LR;", "  node [shape=box, style=rounded, fontname=Helvetica];",
             "  edge [fontname=Helvetica, fontsize=10];"]
    for node in nodes:
        lines.append("  %s;" % _quote(node))
    for row in rows:
        lines.append("  %s -> %s [label=%s];" % (_quote(row["src_group"]), _quote(row["dst_group"]),
                                                 _quote("%s (%d)" % (row["services"], row["connections"]))))
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_svg(dot_text, dot=None):
    """(svg text, None), or (None, why not): Graphviz is optional; without it the report says so."""
    program = dot or shutil.which("dot")
    if program is None:
        return None, "map.svg not drawn: Graphviz dot is not installed (Debian: apt-get install graphviz)"
    try:
        done = subprocess.run([program, "-Tsvg"], input=dot_text, capture_output=True, text=True,
                              timeout=DOT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, "map.svg not drawn: %s -Tsvg failed: %s" % (program, exc)
    if done.returncode != 0:
        return None, "map.svg not drawn: %s -Tsvg exited %d: %s" % (program, done.returncode,
                                                                    done.stderr.strip()[:300])
    return done.stdout, None


def write_report(report, directory, dot=None):
    """Write the report files into ``directory`` (created if missing), each 0600 (they map the fleet's traffic);
    returns (the file names written, notes such as why map.svg is missing)."""
    os.makedirs(directory, exist_ok=True)
    data = report.to_data()
    rows = map_rows(data)
    dot_text = to_dot(rows)
    files = {
        "proposal.yml": report.proposal.yaml,
        "discovery.json": json.dumps(data, indent=2, sort_keys=True) + "\n",
        "flows.csv": to_csv(data["flows"], FLOW_FIELDS),
        "map.csv": to_csv(rows, MAP_FIELDS),
        "map.dot": dot_text,
    }
    svg, note = draw_svg(dot_text, dot)
    if svg is not None:
        files["map.svg"] = svg
    for name, text in sorted(files.items()):
        write_atomic(os.path.join(directory, name), text.encode("utf-8"))
    return sorted(files), [note] if note else []
