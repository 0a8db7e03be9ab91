#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kernel_facts
short_description: Report what a host's kernel can enforce (nftables, BTF, bpf, br_netfilter, NICs)
version_added: 0.1.0
description:
  - Gathers the kernel facts that mseg.fleet needs before it enforces anything and returns them as
    C(ansible_facts.mseg_kernel).
  - Reads C(/proc) and C(/sys); runs C(nft --version), a check-only C(nft --check) transaction that proves the
    kernel's nf_tables answers (nothing is committed), and C(bpftool version) where bpftool is installed.
  - Never fails because an optional facility is missing; it reports it as missing. Deciding what is required is
    the job of the caller, for example the C(mseg.fleet.kernel_prereqs) role.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  proc_root:
    description:
      - Where procfs is mounted. Only for testing against a fixture tree or for unusual layouts.
    type: path
    default: /proc
  sys_root:
    description:
      - Where sysfs is mounted. Only for testing against a fixture tree or for unusual layouts.
      - Offload features are read from the running kernel by interface name, whatever this points to.
    type: path
    default: /sys
  modules_root:
    description:
      - Where the kernel modules live (C(<modules_root>/<release>/modules.dep)); used to tell whether
        br_netfilter could be loaded. Only for testing or unusual layouts.
    type: path
    default: /lib/modules
  nft_path:
    description:
      - The nft command, a name looked up in C(PATH) and the sbin directories, or an absolute path.
      - A path that does not exist is reported as nft not being installed.
    type: str
    default: nft
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
  - mseg.fleet.attributes.facts
notes:
  - The nf_tables probe needs C(CAP_NET_ADMIN) (root, or a container that has it); without it
    C(nftables.works) is false and C(nftables.error) says why.
seealso:
  - name: Kernel BTF
    description: BPF Type Format, which eBPF programs need to load portably (CO-RE).
    link: https://docs.kernel.org/bpf/btf.html
"""

EXAMPLES = r"""
- name: Gather the kernel facts
  mseg.fleet.kernel_facts:

- name: Show whether eBPF enforcement could load
  ansible.builtin.debug:
    msg: "BTF {{ ansible_facts.mseg_kernel.btf.available }}, JIT {{ ansible_facts.mseg_kernel.bpf.jit }}"

- name: Read a fixture tree instead of the live kernel (tests)
  mseg.fleet.kernel_facts:
    proc_root: /srv/fixtures/old-kernel/proc
    sys_root: /srv/fixtures/old-kernel/sys
"""

RETURN = r"""
ansible_facts:
  description: The facts, under C(mseg_kernel).
  returned: always
  type: dict
  contains:
    mseg_kernel:
      description: What the kernel can enforce.
      returned: always
      type: dict
      contains:
        release:
          description: The kernel release (C(uname -r)), null if unreadable.
          type: str
          returned: always
          sample: 6.1.0-28-amd64
        version:
          description: The numeric part of the release, C(major.minor.patch).
          type: str
          returned: always
          sample: 6.1.0
        version_supported:
          description: Whether the kernel is 4.18 or newer, the oldest mseg.fleet supports.
          type: bool
          returned: always
        btf:
          description: Kernel BTF, needed by the eBPF backend.
          type: dict
          returned: always
          contains:
            available:
              description: Whether C(/sys/kernel/btf/vmlinux) exists.
              type: bool
              returned: always
            path:
              description: The path that was checked.
              type: str
              returned: always
              sample: /sys/kernel/btf/vmlinux
        nftables:
          description: The nft command and whether the kernel's nf_tables accepts a transaction.
          type: dict
          returned: always
          contains:
            binary:
              description: The path of nft, null if it is not installed.
              type: str
              returned: always
              sample: /usr/sbin/nft
            version:
              description: The nft version, null if unknown.
              type: str
              returned: always
              sample: 1.0.6
            works:
              description: Whether a check-only C(inet) transaction succeeded.
              type: bool
              returned: always
            error:
              description: Why nftables does not work, null when it works.
              type: str
              returned: always
        bpf:
          description: The bpf() syscall and its JIT.
          type: dict
          returned: always
          contains:
            syscall:
              description: Whether the kernel has the bpf() syscall (C(kernel.unprivileged_bpf_disabled) exists).
              type: bool
              returned: always
            unprivileged_disabled:
              description: C(kernel.unprivileged_bpf_disabled), null without the syscall.
              type: int
              returned: always
            jit:
              description:
                - C(enabled), C(enabled_debug), C(disabled), C(unavailable) (no JIT in the kernel) or C(unknown).
                - C(unknown) in a container with its own network namespace, where the JIT sysctls are not visible.
              type: str
              returned: always
              sample: enabled
            jit_enable:
              description: C(net.core.bpf_jit_enable), null without a JIT or where it is not visible.
              type: int
              returned: always
            jit_harden:
              description: C(net.core.bpf_jit_harden), null without a JIT or where it is not visible.
              type: int
              returned: always
            bpftool:
              description: The bpftool command, where installed.
              type: dict
              returned: always
              contains:
                binary:
                  description: Path of bpftool, null if not installed.
                  type: str
                  returned: always
                version:
                  description: Its version, null if unknown.
                  type: str
                  returned: always
        br_netfilter:
          description: Whether bridged traffic can be filtered.
          type: dict
          returned: always
          contains:
            active:
              description: Whether br_netfilter is active (C(/proc/sys/net/bridge) exists in this network namespace).
              type: bool
              returned: always
            module:
              description:
                - C(loaded) (a loaded module), C(builtin) (compiled in), C(available) (can be loaded with modprobe)
                  or C(missing) (nothing here can load it, for example a container without the host's modules).
              type: str
              returned: always
              sample: loaded
        sysctls:
          description:
            - The forwarding and bridge-nf sysctls as strings (C(net.ipv4.ip_forward),
              C(net.ipv6.conf.all.forwarding), C(net.bridge.bridge-nf-call-iptables),
              C(net.bridge.bridge-nf-call-ip6tables), C(net.bridge.bridge-nf-call-arptables)); null where absent.
          type: dict
          returned: always
          sample: {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
        interfaces:
          description: Per network interface name.
          type: dict
          returned: always
          contains:
            mtu:
              description: The MTU.
              type: int
              returned: always
              sample: 1500
            driver:
              description: The driver of the underlying device, null for virtual interfaces.
              type: str
              returned: always
              sample: ixgbe
            virtual:
              description: Whether the interface has no underlying device (veth, bridge, vxlan ...).
              type: bool
              returned: always
            operstate:
              description: The operational state.
              type: str
              returned: always
              sample: up
            sriov:
              description: SR-IOV capability.
              type: dict
              returned: always
              contains:
                supported:
                  description: Whether the device has C(sriov_totalvfs).
                  type: bool
                  returned: always
                totalvfs:
                  description: The most virtual functions the device can have, null if unsupported.
                  type: int
                  returned: always
                numvfs:
                  description: The virtual functions currently enabled, null if unsupported.
                  type: int
                  returned: always
            features:
              description: Feature name to active state, as C(ethtool -k) reports them; null where unreadable.
              type: dict
              returned: always
              sample: {"rx-gro": true, "tx-udp_tnl-segmentation": true}
        default_route_interfaces:
          description: The interface of the default route.
          type: dict
          returned: always
          contains:
            ipv4:
              description: For IPv4, null without a default route.
              type: str
              returned: always
              sample: eth0
            ipv6:
              description: For IPv6, null without a default route.
              type: str
              returned: always
              sample: eth0
        cpus:
          description: Online CPUs, for pinning the agent.
          type: dict
          returned: always
          contains:
            online:
              description: The online CPU numbers.
              type: list
              elements: int
              returned: always
              sample: [0, 1, 2, 3]
            count:
              description: How many CPUs are online.
              type: int
              returned: always
              sample: 4
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mseg.fleet.plugins.module_utils.host.kernel import gather


def _find(module, name):
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return module.get_bin_path(name, opt_dirs=["/usr/sbin", "/sbin", "/usr/local/sbin"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            proc_root=dict(type="path", default="/proc"),
            sys_root=dict(type="path", default="/sys"),
            modules_root=dict(type="path", default="/lib/modules"),
            nft_path=dict(type="str", default="nft"),
        ),
        supports_check_mode=True,
    )

    def run(argv, stdin):
        return module.run_command(argv, data=stdin, binary_data=True)

    facts = gather(
        run,
        nft_binary=_find(module, module.params["nft_path"]),
        bpftool_binary=_find(module, "bpftool"),
        proc_root=module.params["proc_root"],
        sys_root=module.params["sys_root"],
        modules_root=module.params["modules_root"],
    )
    module.exit_json(changed=False, ansible_facts={"mseg_kernel": facts})


if __name__ == "__main__":
    main()
