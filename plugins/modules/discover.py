#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done on the controller by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: discover
short_description: Propose a label-based policy from observed flows, with its coverage check, diff and map
version_added: 0.3.0
description:
  - The control-node half of the playbook C(mseg.fleet.discover) (docs/discovery.md). Reads the flow records the
    hosts collected (M(mseg.fleet.discover_collect)) and any record files, turns them into endpoint pairs, label
    pairs and a proposed policy, proves with the engine's trace that the proposal allows every kept flow, diffs it
    against the current policy and lists the label pairs that stay closed.
  - A connection between two hosts that both collected is in both hosts' conntrack tables; it is counted once, from
    the receiver's records (which also know whether it listened).
  - With O(dest) it writes there C(proposal.yml), C(discovery.json), C(flows.csv), C(map.csv), C(map.dot), C(map.svg)
    (when Graphviz is installed) and the merged C(records.csv), each 0600.
  - Runs on the controller.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  records:
    description: Per inventory host, the CSV records its collector returned (RV(mseg.fleet.discover_collect#module:records)).
    type: dict
    default: {}
  failed:
    description: Per inventory host that could not collect, why (unreachable, no mseg table, ...). Only reported.
    type: dict
    default: {}
  status:
    description: Per inventory host, the collector's status (RV(mseg.fleet.discover_collect#module:status)); a host
      whose collector reached O(mseg.fleet.discover_collect#module:max_flows) or stopped early is reported as
      incomplete.
    type: dict
    default: {}
  audit:
    description:
      - Per inventory host, the audit records of its window, as RV(mseg.fleet.discover_collect#module:audit) returns
        them (C(lines), C(from), C(to), C(overflow), C(unreadable)). Each line is judged again by the drop log's strict
        parser and used only inside the host's window.
      - An audit record is a connection the current policy would drop in enforce. A flow's count is the largest of
        the hosts' audit counts and the collectors' count (the same connection is in both), never their sum.
    type: dict
    default: {}
  pcaps:
    description:
      - Packet captures on the controller (pcap or pcapng, e.g. C(tcpdump -i any -w baseline.pcap) on a host not yet
        managed), read with the Python package C(dpkt) (a control-node requirement); docs/discovery.md, "Packet
        captures". A TCP connection is a SYN without ACK; UDP's server port is the one outside C(ephemeral_ports);
        no payload is kept.
      - A file that is not a capture, or is cut short, is named in RV(summary.pcaps) (its C(problems)) with what is
        wrong; the other files and inputs are still read.
    type: list
    elements: path
    default: []
  record_files:
    description: CSV files of flow records on the controller (docs/discovery.md, "Flow records"), e.g. the
      C(records.csv) of an earlier run, read in addition to O(records).
    type: list
    elements: path
    default: []
  settings:
    description: The engine's settings (C(group_by), C(min_count), C(exclude), C(outside_prefix_v4),
      C(outside_prefix_v6), C(outside_min_addresses), C(ephemeral_ports), C(port_gap), C(first_id), C(id_step));
      each may be omitted (docs/discovery.md, "Settings"). A setting not given here is taken from the variable
      C(mseg_discover_<name>) when it is defined (C(mseg_discover_min_count) ...), else the engine's default.
    type: dict
    default: {}
  dest:
    description:
      - Directory on the controller to write the report into, created 0700. An existing one must belong to the user
        running Ansible and be writable by no one else.
    type: path
extends_documentation_fragment:
  - mseg.fleet.controller_side
attributes:
  check_mode:
    description: Proposes in check mode too, and writes nothing.
seealso:
  - module: mseg.fleet.discover_collect
  - module: mseg.fleet.trace
"""

EXAMPLES = r"""
- name: Propose a policy from what the hosts collected
  mseg.fleet.discover:
    records: "{{ collected_records }}"
    settings:
      min_count: 5
      exclude: [{ports: [udp/5353]}]
    dest: ~/.mseg/discovery
  run_once: true

- name: Propose again from an earlier run's records, with another threshold
  mseg.fleet.discover:
    record_files: [~/.mseg/discovery/records.csv]
    settings: {min_count: 20}
    dest: ~/.mseg/discovery-20
  run_once: true
"""

RETURN = r"""
summary:
  description: The outcome in numbers (also published as the AWX artifact C(mseg_discover) by the playbook).
  returned: success
  type: dict
  contains:
    hosts:
      description: C(collected) (the hosts whose records were read), C(not_collected) (host -> why) and
        C(incomplete) (host -> why its records miss part of the window or of its flows).
      type: dict
    records:
      description: Records read.
      type: int
    malformed:
      description: Records refused (their messages are in C(discovery.json)).
      type: int
    seen_twice:
      description: Records left out because the receiving host reported the same connections itself.
      type: int
    audit:
      description: What the audit records gave. C(lines) received, C(used), C(outside_window), C(rejected) (with
        the first C(problems)), C(flows_added) (flows the collectors had not recorded), C(counts_raised), and per
        host C(overflow) and C(unreadable).
      type: dict
    pcaps:
      description: The captures read. C(files) (each C(file) and its C(packets)), C(records) (the flow records they
        gave) and C(problems) (one per bad file or packet).
      type: dict
    flows_kept:
      description: Endpoint pairs at or above C(min_count) that the proposal allows.
      type: int
    rules:
      description: Rules proposed.
      type: int
    left_out:
      description: Flows left out per reason (C(below_threshold), C(excluded), C(not_listening), ...).
      type: dict
    uncovered:
      description: Kept flows the proposal would not allow (always 0 unless the engine has a defect).
      type: int
    closed_pairs:
      description: Ordered pairs of label groups the proposal opens nothing between (null beyond 1,000 groups).
      type: int
    current_would_drop:
      description: Kept flows the current policy would drop; null without a current policy.
      type: int
    current_unused_rules:
      description: Allow rules of the current policy that no observed flow used; null without a current policy.
      type: int
    notes:
      description: Remarks on the report files, e.g. why C(map.svg) is missing.
      type: list
      elements: str
proposal:
  description: The proposed policy, YAML ready for C(group_vars/all), a comment per rule on the flows that justify it.
  returned: success
  type: str
lines:
  description: The summary as human-readable lines.
  returned: success
  type: list
  elements: str
files:
  description: The files written into O(dest).
  returned: success
  type: list
  elements: str
"""
