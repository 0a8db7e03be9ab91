#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: probe_listener
short_description: Run a temporary listener that answers reachability probes
version_added: 0.1.0
description:
  - Starts (or stops) a small detached process on the host that listens on the given TCP and UDP ports, on IPv4
    and IPv6, and answers every probe with C(MSEG-PROBE <host> <proto>/<port>), so that M(mseg.fleet.probe) on
    another host can prove with real packets that a port is reachable and who answered.
  - The listener exits by itself after O(duration) seconds; starting a new one stops the previous one. Ports
    that another service already listens on are left to it and reported in RV(busy).
  - Meant for test and lab hosts (the listener accepts anything); stop it when done.
author:
  - mseg.fleet contributors (@mseg-fleet)
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
attributes:
  check_mode:
    description: Reports whether a listener would be started or stopped.
options:
  state:
    description: V(started) starts a listener (replacing a running one), V(stopped) stops it.
    type: str
    choices: [started, stopped]
    default: started
  ports:
    description: V(tcp/<port>) and V(udp/<port>) to listen on; V(icmp) is accepted and ignored (the kernel answers).
    type: list
    elements: str
    default: []
  duration:
    description: Seconds after which the listener exits by itself.
    type: int
    default: 600
  hostname:
    description: The name the listener answers with. Default is the host's name.
    type: str
seealso:
  - module: mseg.fleet.probe
"""

EXAMPLES = r"""
- name: Listen on the ports the policy talks about
  mseg.fleet.probe_listener:
    ports: [tcp/5432, tcp/8080, udp/53]
    duration: 120
    hostname: "{{ inventory_hostname }}"

- name: Stop listening
  mseg.fleet.probe_listener:
    state: stopped
"""

RETURN = r"""
pid:
  description: PID of the listener.
  returned: state=started and not check mode
  type: int
listening:
  description: The ports the listener answers on.
  returned: state=started and not check mode
  type: list
  elements: str
  sample: [tcp/5432, udp/53]
busy:
  description: Ports another service already listens on (left to it).
  returned: state=started and not check mode
  type: list
  elements: str
  sample: [tcp/22]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mseg.fleet.plugins.module_utils.host.probe import (
    ProbeError,
    parse_port,
    running_listener,
    start_listener,
    stop_listener,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["started", "stopped"], default="started"),
            ports=dict(type="list", elements="str", default=[]),
            duration=dict(type="int", default=600),
            hostname=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        for spec in p["ports"]:
            parse_port(spec)
        if not 1 <= p["duration"] <= 86400:
            raise ProbeError("duration must be between 1 and 86400 seconds, got %d" % p["duration"])
        if p["state"] == "stopped":
            if module.check_mode:
                module.exit_json(changed=running_listener() is not None)
            module.exit_json(changed=stop_listener())
        if module.check_mode:
            module.exit_json(changed=True)
        pid, listening, busy = start_listener(p["ports"], p["duration"], p["hostname"])
    except ProbeError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=True, pid=pid, listening=listening, busy=busy)


if __name__ == "__main__":
    main()
