#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: lab
short_description: Boot or remove a local virtual fleet of Debian hosts with systemd-nspawn
version_added: 0.1.0
description:
  - Runs on the control node (as root) and manages a I(lab), a set of Debian 12 hosts that each boot their own
    systemd with C(systemd-nspawn --boot) in their own network namespace, attached to one bridge with a private
    IPv4 /24 and a ULA IPv6 /64, and reachable over SSH as C(root) with a per-lab key.
  - The root file system is built once with C(debootstrap --variant=minbase) and cached under O(cache_dir), keyed by
    a hash of its package list; each host boots from an overlay on top of it (or a copy, see O(method)).
  - Every object the lab creates (processes, mounts, bridge, veth names) is recorded in C(state.json) under
    O(state_dir) before it is created; O(state=absent) removes exactly those objects, also after a crash, and is a
    no-op when nothing is recorded.
  - When C(state.json) is damaged (not readable, not JSON, or malformed), O(state=present) fails without starting
    anything, and O(state=absent) removes what it can tie to O(state_dir) instead - every systemd-nspawn booting
    a root under it with its veth, cgroups and bridge, the overlays mounted there, and the bridge, cgroups and
    veths named after O(name) that no other lab's host uses; a bridge that still has other ports is kept.
  - O(state=absent) never deletes O(state_dir) while anything is still mounted below it; it fails naming the
    mount instead.
  - O(state=absent) returns only once every C(systemd-nspawn) of the lab has exited and been collected by its parent,
    and its interfaces and mounts are gone, so a lab or Molecule scenario started right after it never meets a
    dying one; when that takes longer than O(stop_timeout) more seconds it fails naming what is still there.
  - Without fixed addresses the lab takes the first free /24 of C(10.213.0.0/16) starting at an index derived from
    O(name); C(10.213.0.0/24) is left for inventories with fixed addresses.
author:
  - mseg.fleet contributors (@mseg-fleet)
requirements:
  - systemd-nspawn (Debian package systemd-container), debootstrap, iproute2, openssh-client on the control node
  - root on the control node
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
attributes:
  check_mode:
    description: Reports whether hosts would be started or removed without touching anything.
  diff_mode:
    description: The lab has no textual state to compare.
  platform:
    description: A Debian 12 (or similar) Linux control node, as root.
options:
  name:
    description:
      - Name of the lab; interface names, machine names and the default subnet derive from it.
      - 1-32 characters C(a-z), C(0-9), C(_) or C(-), starting with a letter.
    type: str
    required: true
  state:
    description:
      - V(present) boots the hosts that are not running, removes recorded hosts that are not in O(hosts) and waits
        until every host answers SSH; V(absent) removes the whole lab.
    type: str
    choices: [present, absent]
    default: present
  hosts:
    description:
      - The hosts of the lab, in order (the order decides interface names and automatic addresses).
      - Must not be empty with O(state=present).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Host name (C(a-z), C(0-9), C(-)); also the host's C(/etc/hostname).
        type: str
        required: true
      ipv4:
        description:
          - Fixed IPv4 address. All fixed addresses of a lab must lie in one /24, whose C(.1) is the bridge.
          - Hosts without one get C(.10) plus their index.
        type: str
      ipv6:
        description: Fixed IPv6 address, in the /64 that matches the IPv4 /24; required when O(hosts[].ipv4) is set.
        type: str
  state_dir:
    description: Directory holding the lab's state, SSH key, host overlays and console logs.
    type: path
    required: true
  cache_dir:
    description: Directory holding the cached root file systems.
    type: path
    default: /var/cache/mseg-lab
  extra_packages:
    description:
      - Debian packages installed into the root file system on top of the built-in list (systemd, python3,
        openssh-server, nftables, iproute2, nginx-light, keepalived, python3-cryptography and the other packages the
        collection's roles need). Changing the list builds a new cached root file system.
    type: list
    elements: str
    default: []
  suite:
    description: Debian suite to bootstrap.
    type: str
    default: bookworm
  mirror:
    description: Debian mirror used by debootstrap.
    type: str
    default: http://deb.debian.org/debian
  method:
    description:
      - How each host gets its writable root. V(overlay) mounts an overlayfs over the cached tree (8 hosts start
        in about a second); V(copy) copies it with C(cp --reflink=auto -a) (fast only on reflink file systems).
    type: str
    choices: [overlay, copy]
    default: overlay
  capabilities:
    description: Extra capabilities for every host (C(systemd-nspawn --capability)), for example C(CAP_BPF).
    type: list
    elements: str
    default: []
  boot_timeout:
    description: Seconds to wait for every host to answer SSH; a host that does not fails the task.
    type: int
    default: 60
  build_timeout:
    description: Seconds the root file system build may take.
    type: int
    default: 1200
  stop_timeout:
    description:
      - Seconds each host gets to power off after SIGTERM before it is killed; with O(state=absent), as many
        seconds again for every process, interface and mount of the lab to be gone.
    type: int
    default: 30
notes:
  - The control node must allow C(systemd-nspawn) to run; PID 1 does not need to be systemd.
  - Raises the control node's inotify limits when they are below what many guests need (see RV(raised_limits)).
  - Hosts cannot reach a package mirror; everything a role needs must be in the root file system.
seealso:
  - name: systemd-nspawn
    description: The container manager that boots each lab host.
    link: https://www.freedesktop.org/software/systemd/man/systemd-nspawn.html
"""

EXAMPLES = r"""
- name: Boot two hosts with automatic addresses
  mseg.fleet.lab:
    name: scratch
    state_dir: /srv/labs/scratch
    hosts:
      - name: web-01
      - name: db-01
  register: scratch

- name: Boot hosts with fixed addresses
  mseg.fleet.lab:
    name: demo
    state_dir: /srv/labs/demo
    hosts:
      - name: web-01
        ipv4: 10.213.0.21
        ipv6: fd6d:7365:6700:0::21

- name: Remove the lab
  mseg.fleet.lab:
    name: scratch
    state: absent
    state_dir: /srv/labs/scratch
"""

RETURN = r"""
bridge:
  description: Name of the lab's bridge on the control node.
  returned: state=present
  type: str
  sample: mslb-demo
ipv4_subnet:
  description: The lab's IPv4 subnet.
  returned: state=present
  type: str
  sample: 10.213.0.0/24
ipv6_subnet:
  description: The lab's IPv6 subnet.
  returned: state=present
  type: str
  sample: fd6d:7365:6700:0::/64
gateway_ipv4:
  description: The bridge's IPv4 address (the control node as seen from the hosts).
  returned: state=present
  type: str
  sample: 10.213.0.1
gateway_ipv6:
  description: The bridge's IPv6 address.
  returned: state=present
  type: str
  sample: fd6d:7365:6700:0::1
private_key:
  description: Path of the lab's SSH private key (ed25519, mode 0600); root on every host accepts it.
  returned: state=present
  type: str
  sample: /srv/labs/demo/id_ed25519
rootfs:
  description: Path of the cached root file system the hosts boot from.
  returned: state=present
  type: str
  sample: /var/cache/mseg-lab/rootfs-fa24ff2ee74b3027
rootfs_built:
  description: Whether this run built the root file system.
  returned: state=present
  type: bool
hosts:
  description: The lab's hosts.
  returned: state=present
  type: list
  elements: dict
  contains:
    name:
      description: Host name.
      type: str
    ipv4:
      description: IPv4 address.
      type: str
    ipv6:
      description: IPv6 address.
      type: str
    machine:
      description: systemd-nspawn machine name.
      type: str
    host_veth:
      description: Host side of the host's veth, a port of the bridge.
      type: str
raised_limits:
  description:
    - Control-node sysctls this run raised, each mapped to its values before and after. Every guest's systemd uses several inotify
      instances, counted against root, so the lab raises C(fs.inotify.max_user_instances) to at least 8192 and
      C(fs.inotify.max_user_watches) to at least 524288. Limits are never lowered, also not at teardown.
  returned: state=present and not check mode
  type: dict
  sample: {fs.inotify.max_user_instances: [128, 8192]}
timings:
  description: Seconds spent on the root file system, on starting the hosts, on waiting for SSH, and in total.
  returned: state=present and not check mode
  type: dict
  sample: {rootfs: 0.0, start: 0.44, ssh: 1.5, total: 1.97}
removed_hosts:
  description: Hosts removed by O(state=absent).
  returned: state=absent
  type: list
  elements: str
killed:
  description: Hosts that did not power off within O(stop_timeout) and were killed.
  returned: state=absent
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mseg.fleet.plugins.module_utils._lab.lab import (
    DEFAULT_PACKAGES,
    LabError,
    lab_down,
    lab_status,
    lab_up,
    validate_name,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            hosts=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                ipv4=dict(type="str"),
                ipv6=dict(type="str"),
            )),
            state_dir=dict(type="path", required=True),
            cache_dir=dict(type="path", default="/var/cache/mseg-lab"),
            extra_packages=dict(type="list", elements="str", default=[]),
            suite=dict(type="str", default="bookworm"),
            mirror=dict(type="str", default="http://deb.debian.org/debian"),
            method=dict(type="str", choices=["overlay", "copy"], default="overlay"),
            capabilities=dict(type="list", elements="str", default=[]),
            boot_timeout=dict(type="int", default=60),
            build_timeout=dict(type="int", default=1200),
            stop_timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        validate_name(p["name"])
        if module.check_mode:
            state, alive = lab_status(p["state_dir"])
            if p["state"] == "absent":
                module.exit_json(changed=bool(state.data["hosts"]) or bool(state.data.get("bridge"))
                                 or state.problem is not None)
            wanted = set(h["name"] for h in p["hosts"])
            running = set(h for h, up in alive.items() if up)
            module.exit_json(changed=wanted != running or len(alive) != len(running))
        if p["state"] == "absent":
            module.exit_json(**lab_down(p["state_dir"], timeout=p["stop_timeout"], name=p["name"]))
        result = lab_up(
            p["name"], p["hosts"], p["state_dir"], p["cache_dir"],
            packages=tuple(DEFAULT_PACKAGES) + tuple(p["extra_packages"]), suite=p["suite"], mirror=p["mirror"],
            method=p["method"], boot_timeout=p["boot_timeout"], build_timeout=p["build_timeout"],
            capabilities=p["capabilities"],
        )
        module.exit_json(**result)
    except LabError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
