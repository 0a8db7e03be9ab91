# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare reachability measured with packets against what trace predicts."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: compare_reachability
short_description: Compare measured reachability with the trace prediction
version_added: 0.1.0
description:
  - Takes the results of real probes between hosts (as the lab's C(reachability.yml) playbook collects them) and
    the results of M(mseg.fleet.trace) for the same ports, and pairs them by source, destination, address family
    and port.
  - Returns whether they agree, every disagreement, and the two matrices side by side for each port.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  _input:
    description: Measured results, each with C(src), C(dst), C(family) (ipv4/ipv6), C(port) and C(reachable).
    type: list
    elements: dict
    required: true
  predicted:
    description: Trace results, each with C(src), C(dst), C(family), C(port) and C(allowed).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Compare
  ansible.builtin.set_fact:
    agreement: "{{ lab_reachability | mseg.fleet.compare_reachability(trace_results) }}"
"""

RETURN = r"""
_value:
  description: C(agree) (bool), C(compared) (int), C(mismatches) (list of dicts) and C(lines) (the matrices).
  type: dict
"""

from ansible.errors import AnsibleFilterError  # noqa: E402


def _key(item):
    return (item["src"], item["dst"], item["family"], item["port"])


def _mark(value):
    if value is None:
        return "  -"
    return "  +" if value else "  x"


def _matrix(port, family, hosts, cells):
    width = max(len(h) for h in hosts)
    lines = ["%s %s  (measured | predicted: + open/allowed, x dropped/denied, . self)" % (port, family)]
    lines.append(" " * width + "  " + " ".join("%3d" % (i + 1) for i in range(len(hosts))) + "    " +
                 " ".join("%3d" % (i + 1) for i in range(len(hosts))))
    for src in hosts:
        measured = []
        predicted = []
        for dst in hosts:
            pair = cells.get((src, dst))
            if src == dst:
                measured.append("  .")
                predicted.append("  .")
            elif pair is None:
                measured.append("  ?")
                predicted.append("  ?")
            else:
                measured.append(_mark(pair[0]))
                predicted.append(_mark(pair[1]) + ("!" if pair[0] is not None and pair[0] != pair[1] else ""))
        lines.append("%s  %s  | %s" % (src.ljust(width), " ".join(measured), " ".join(predicted)))
    lines.append("columns: " + ", ".join("%d=%s" % (i + 1, h) for i, h in enumerate(hosts)))
    return lines


def compare_reachability(measured, predicted):
    try:
        seen = {_key(m): bool(m["reachable"]) for m in measured}
        expected = {_key(p): bool(p["allowed"]) for p in predicted}
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError("compare_reachability: every result needs src, dst, family, port and "
                                 "reachable/allowed (%s)" % exc)
    mismatches = []
    for key in sorted(set(seen) & set(expected)):
        if seen[key] != expected[key]:
            mismatches.append({"src": key[0], "dst": key[1], "family": key[2], "port": key[3],
                               "measured": seen[key], "predicted": expected[key]})
    missing = sorted(set(seen) - set(expected))
    lines = []
    for port, family in sorted({(k[3], k[2]) for k in seen}):
        hosts = sorted({k[0] for k in seen if k[3] == port} | {k[1] for k in seen if k[3] == port})
        cells = {(k[0], k[1]): (seen[k], expected.get(k)) for k in seen if k[3] == port and k[2] == family}
        lines.extend(_matrix(port, family, hosts, cells))
    compared = len(set(seen) & set(expected))
    agree = not mismatches and not missing and compared > 0
    lines.append("%s: %d of %d measured flows compared, %d disagree%s" % (
        "AGREE" if agree else "DISAGREE", compared, len(seen), len(mismatches),
        ", %d had no prediction" % len(missing) if missing else ""))
    return {"agree": agree, "compared": compared, "mismatches": mismatches, "lines": lines,
            "unpredicted": [dict(zip(("src", "dst", "family", "port"), k)) for k in missing]}


class FilterModule(object):
    def filters(self):
        return {"compare_reachability": compare_reachability}
