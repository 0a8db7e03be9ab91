# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is wrong with the rollout's health probes, checked before any host changes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: health_probe_problems
short_description: What is wrong with the health probes of a rollout, one line per problem
version_added: 0.2.0
description:
  - Takes each host's health probes (C(mseg_health_probes), a list of C({dst, port})) and returns every problem, one
    line each, naming up to three of the hosts that have it; an empty list when every probe can run.
  - A probe needs C(dst), a host of the inventory, and C(port), one port as the probe module reads it
    (V(tcp/<1-65535>), V(udp/<1-65535>) or V(icmp)); the port is checked by the collection's one port parser.
  - The P(mseg.fleet.policy#role) role's C(health_probes) entry point fails the play with these lines before any host
    changes.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  _input:
    description: Each host's probes, by inventory hostname.
    type: dict
    required: true
  inventory:
    description: The hosts of the inventory (a probe's C(dst) must be one of them).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Check the probes of the play's hosts
  ansible.builtin.assert:
    that: problems | length == 0
    fail_msg: "mseg_health_probes: {{ problems | join('; ') }}"
  vars:
    problems: >-
      {{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, 'mseg_health_probes')))
         | mseg.fleet.health_probe_problems(groups['all']) }}
"""

RETURN = r"""
_value:
  description:
    - One line per problem, naming up to three hosts that have it.
    - "For example C(probe 1: dst db-1 is not a host of the inventory (app-01, web-01))."
  type: list
  elements: str
"""

from collections.abc import Mapping  # noqa: E402

from ansible.errors import AnsibleFilterError  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import parse_single_port  # noqa: E402

SHOWN_HOSTS = 3


def probe_problems(probes, inventory):
    """The problems of one host's probes, as sentences."""
    if isinstance(probes, (str, bytes, Mapping)) or not isinstance(probes, (list, tuple)):
        return ["expected a list of probes, got %s" % (probes,)]
    problems = []
    for index, probe in enumerate(probes, 1):
        if not isinstance(probe, Mapping) or "dst" not in probe or "port" not in probe:
            problems.append("probe %d (%s) needs dst and port" % (index, probe))
            continue
        if str(probe["dst"]) not in inventory:
            problems.append("probe %d: dst %s is not a host of the inventory" % (index, probe["dst"]))
        spec, _reason = parse_single_port(probe["port"])
        if spec is None:
            problems.append("probe %d: port %s is not tcp/<port>, udp/<port> or icmp" % (index, probe["port"]))
    return problems


def health_probe_problems(by_host, inventory):
    if not isinstance(by_host, Mapping):
        raise AnsibleFilterError("health_probe_problems: expected each host's probes by hostname, got %r" % (by_host,))
    inventory = set(str(name) for name in inventory or ())
    hosts_of = {}
    for host, probes in by_host.items():
        for problem in probe_problems(probes, inventory):
            hosts_of.setdefault(problem, []).append(str(host))
    lines = []
    for problem, hosts in hosts_of.items():
        more = " and %d more" % (len(hosts) - SHOWN_HOSTS) if len(hosts) > SHOWN_HOSTS else ""
        lines.append("%s (%s%s)" % (problem, ", ".join(hosts[:SHOWN_HOSTS]), more))
    return lines


class FilterModule(object):
    def filters(self):
        return {"health_probe_problems": health_probe_problems}
