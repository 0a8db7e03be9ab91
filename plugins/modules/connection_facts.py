#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: connection_facts
short_description: The address and SSH port Ansible connects from, as the managed host sees them
version_added: 0.2.0
description:
  - Returns C(ansible_facts.mseg_connection), the controller's address and the host's SSH port of the connection
    this task runs over, found exactly as M(mseg.fleet.nft_apply) finds them to keep the operator reachable
    (C(SSH_CONNECTION) of the module, else of its ancestors up to the SSH session, so it works under C(become)).
  - The P(mseg.fleet.agent#role) role adds this address to the management peers every bundle keeps reachable on SSH.
  - Changes nothing; on a connection that is not SSH (local, a container) it reports C(ssh=false).
author:
  - mseg.fleet contributors (@mseg-fleet)
options: {}
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
  - mseg.fleet.attributes.facts
attributes:
  check_mode:
    description: Reads in check mode too; it never changes anything.
"""

EXAMPLES = r"""
- name: Find the address Ansible connects from
  mseg.fleet.connection_facts:

- name: Keep it reachable
  ansible.builtin.debug:
    msg: "{{ ansible_facts.mseg_connection.address }} -> tcp/{{ ansible_facts.mseg_connection.port }}"
  when: ansible_facts.mseg_connection.ssh
"""

RETURN = r"""
ansible_facts:
  description: The facts, under C(mseg_connection).
  returned: always
  type: dict
  contains:
    mseg_connection:
      description: The connection this task runs over.
      returned: always
      type: dict
      contains:
        ssh:
          description: Whether the task runs over SSH (and so whether the address and port are known).
          type: bool
          returned: always
        address:
          description: The address the controller connects from, as this host sees it (an IPv4-mapped address is
            given as IPv4); null when not over SSH.
          type: str
          returned: always
          sample: 192.0.2.10
        port:
          description: This host's SSH port of the connection; null when not over SSH.
          type: int
          returned: always
          sample: 22
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import detect_ssh_peer  # noqa: E402


def connection_fact(peer):
    """``mseg_connection`` for what ``detect_ssh_peer`` found: (address, port) or None."""
    address, port = peer if peer else (None, None)
    return {"ssh": peer is not None, "address": address, "port": port}


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts={"mseg_connection": connection_fact(detect_ssh_peer())})


if __name__ == "__main__":
    main()
