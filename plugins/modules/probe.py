#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: probe
short_description: Measure reachability from this host with real TCP, UDP and ICMP packets
version_added: 0.1.0
description:
  - Runs on the source host and tries every target with a short timeout; returns one result per target as data.
  - TCP is V(open) when the handshake completes; UDP when a reply to the probe's datagram arrives (the destination
    needs a listener, see M(mseg.fleet.probe_listener)); ICMP when one echo request is answered.
  - A listener started by M(mseg.fleet.probe_listener) names itself in its answer, returned as RV(results[].responder),
    so a packet that reached another host than intended can be told apart.
  - The module never changes the host.
author:
  - mseg.fleet contributors (@mseg-fleet)
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
attributes:
  check_mode:
    description: Probes are sent in check mode too; they change nothing.
options:
  targets:
    description: What to probe.
    type: list
    elements: dict
    required: true
    suboptions:
      address:
        description: Destination IPv4 or IPv6 address.
        type: str
        required: true
      port:
        description: V(tcp/<port>), V(udp/<port>) or V(icmp).
        type: str
        required: true
      name:
        description: A label copied to the result, for example the destination's inventory name.
        type: str
  timeout:
    description: Seconds to wait for each target.
    type: float
    default: 1.0
notes:
  - Targets are probed one after another, so the run takes at most the number of targets times O(timeout).
seealso:
  - module: mseg.fleet.probe_listener
"""

EXAMPLES = r"""
- name: Probe the database from the web hosts
  mseg.fleet.probe:
    targets:
      - {name: db-01, address: 10.213.0.41, port: tcp/5432}
      - {name: db-01, address: "fd6d:7365:6700::41", port: tcp/5432}
      - {name: db-01, address: 10.213.0.41, port: icmp}
    timeout: 0.5
  register: probed

- name: Fail if db-01 is reachable
  ansible.builtin.assert:
    that: probed.results | selectattr('reachable') | list | length == 0
"""

RETURN = r"""
results:
  description: One entry per target, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The target's label, if given.
      type: str
    address:
      description: Destination address.
      type: str
    port:
      description: V(tcp/<port>), V(udp/<port>) or V(icmp).
      type: str
    result:
      description:
        - V(open) (handshake or reply), V(refused) (TCP reset or ICMP port unreachable), V(timeout) (nothing came
          back, so the packet was dropped, or this host's own ruleset dropped it on its way out), or V(unreachable)
          (no route or no neighbour).
      type: str
      sample: open
    reachable:
      description: True exactly when RV(results[].result) is V(open).
      type: bool
    responder:
      description: Host name a probe listener answered with; null for other services and for ICMP.
      type: str
      sample: db-01
    elapsed_ms:
      description: Milliseconds the probe took.
      type: int
reachable:
  description: Number of targets that were reachable.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mseg.fleet.plugins.module_utils.host.probe import ProbeError, parse_port, probe


def main():
    module = AnsibleModule(
        argument_spec=dict(
            targets=dict(type="list", elements="dict", required=True, options=dict(
                address=dict(type="str", required=True),
                port=dict(type="str", required=True),
                name=dict(type="str"),
            )),
            timeout=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    if not 0 < module.params["timeout"] <= 60:
        module.fail_json(msg="timeout must be between 0 and 60 seconds, got %s" % module.params["timeout"])
    try:
        for index, target in enumerate(module.params["targets"]):
            try:
                parse_port(target["port"])
            except ProbeError as exc:
                raise ProbeError("targets[%d]: %s" % (index, exc))
        results = []
        for target in module.params["targets"]:
            result = probe(target["address"], target["port"], module.params["timeout"])
            result["name"] = target["name"]
            results.append(result)
    except ProbeError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, ValueError) as exc:
        module.fail_json(msg="probe failed: %s (check the target addresses)" % exc)
    module.exit_json(changed=False, results=results, reachable=sum(1 for r in results if r["reachable"]))


if __name__ == "__main__":
    main()
