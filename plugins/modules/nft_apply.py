#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nft_apply
short_description: Apply a rendered mseg.fleet ruleset to table inet mseg atomically, idempotently and safely
version_added: 0.1.0
description:
  - Replaces the nftables table C(inet mseg) with the rendered ruleset O(content) in one transaction, which the
    kernel commits whole or not at all (a ruleset it refuses leaves the live ruleset as it was). No other table is ever modified or flushed (Docker, Kubernetes,
    firewalld and the distribution's own rules keep theirs); content that touches anything but
    C(inet mseg) (C(flush ruleset), other tables, C(include)) is refused before C(nft) runs.
  - Idempotent. After an apply the sha256 of the desired transaction and of the document loaded, and the live
    table listed without counters (C(nft -s list table inet mseg)), are recorded under O(state_dir). A run is
    unchanged when they still match; a hand edit of the live table (a changed rule, a deleted table, a changed
    set) is drift and is corrected. The kernel's ruleset generation id and the network namespace's cookie are
    recorded as well, so an unchanged run on a host whose nftables ruleset nobody touched neither parses the
    content nor lists the table, and an apply whose load was the only commit records the document it loaded
    instead of listing the table.
  - Check mode changes nothing and reports what would change; it asks the kernel (C(nft -c)) whether it would
    accept the ruleset. With C(--diff) the before/after is the
    readable table listing without counters (the after side is computed in a scratch network namespace
    when C(unshare) is allowed, otherwise it is the desired ruleset text).
  - The table that was live before an apply is kept in C(ruleset.prev.nft) as a loadable backup.
    O(state=previous) restores it, under the same lock, and only while the live table is still the one that
    replaced it (the sha256 of its listing is recorded after every apply). Over a newer policy (applied from
    elsewhere) or a hand-edited table it fails, says why, and changes nothing. A backup of no table removes the
    table. The restored table is persisted like an applied one, and restoring twice changes nothing the second time.
  - With O(persist) the applied transaction is written to C(<state_dir>/ruleset.nft) (directory 0700,
    files 0600, owned by root; its first line carries its own sha256) and the boot unit
    C(mseg-restore.service) is installed and enabled. It runs after the distribution's C(nftables.service)
    and before C(network-pre.target).
  - B(Fail closed at boot.) If the persisted file is missing, fails its sha256 or is rejected by
    C(nft -c), the unit does not load it. It loads a fail-closed table C(inet mseg) instead. Inbound
    traffic is dropped except loopback, established/related flows, ICMPv6 neighbour discovery and new
    connections to the SSH port(s) (22 and the port the controller used), so the host stays repairable.
    Outbound traffic is accepted. The unit exits non-zero and writes the reason to the journal
    (C(journalctl -u mseg-restore)). Re-running the apply repairs it.
  - Concurrent applies on one host are serialised with a lock on C(<state_dir>/lock) and the host-wide lock of the
    table (C(/run/mseg/inet-mseg.lock)), which the agent and the commit-confirmed worker take too, so writers with
    different state directories never interleave.
  - On a host whose table the P(mseg.fleet.agent#role) role handed to the agent (C(<state_dir>/agent.json) exists) the
    module refuses and changes nothing; change such hosts through the agent (a published bundle, or
    M(mseg.fleet.host_cli) for a local mode or bypass), so a playbook and the agent never undo each other.
  - A commit-confirmed rollback restores the previous table only while the live table is still the one its apply
    loaded; over a newer table (the agent, a bypass, another writer) it changes nothing and the task fails saying so.
  - The controller's SSH source address and the SSH server port, as the host sees them
    (C(SSH_CONNECTION), or the environment of the sshd session process when C(become) stripped it), are
    added to the set C(mgmt_auto_v4) or C(mgmt_auto_v6) in the same transaction unless
    O(management_auto=false), so an enforce ruleset never cuts the connection that applies it.
  - Commit-confirmed (O(confirm_timeout)). The host arms a rollback before applying. A detached
    worker (its own session, no systemd needed) applies the ruleset and waits. The controller resets its
    connection, reconnects over a fresh one and confirms. Without a confirmation within O(confirm_timeout)
    seconds the host restores the previous table by itself. The persisted file and the recorded state are
    only written once confirmed, so a rollback leaves them as they were. The task then fails and says that it rolled back and
    why.
  - Errors (C(nft) missing, kernel without nf_tables, invalid ruleset, unwritable O(state_dir), lock held
    too long) end with one message and the host keeps its previous ruleset.
author:
  - mseg.fleet developers (@mseg-fleet)
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.diff
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
    details: The action plugin orchestrates commit-confirmed (reconnect and confirm).
  async:
    support: none
    details: Commit-confirmed runs its own detached worker on the host; do not set C(async) on the task.
  bypass_host_loop:
    support: none
options:
  content:
    description:
      - The rendered ruleset text, exactly as the mseg.fleet render step writes it (a complete
        C(nft -f) file for table C(inet mseg) that declares the sets C(mgmt_auto_v4) and C(mgmt_auto_v6)).
      - Or the same ruleset in the libnftables JSON form (content that starts with a brace), one JSON object whose
        only key C(nftables) holds the objects of table C(inet mseg) as C(nft -j list) prints them. It is judged as it
        is, with no scratch parse, and loaded with one C(nft -j -f) (the fast first apply of a big ruleset). It is
        held to the same contract, and to more than a text is (see C(docs/security.md)); a duplicate key, a command
        such as C(flush), a set element that is not a plain address, prefix, range or address . port of the set's
        type, and a statement field the contract does not list are refused.
      - Required when O(state=present); not used otherwise.
    type: str
  state:
    description:
      - V(present) applies O(content); V(absent) deletes table C(inet mseg), the persisted copy and the
        boot unit (the backup stays).
      - V(previous) restores the backup C(ruleset.prev.nft) of the table the last apply replaced (the rollback of
        a rollout), with the management entries as for V(present). It fails, changing nothing, when the live table
        is no longer the one that apply put there, when the backup is not the one it kept, or when there is none.
        The backup stays as it is, so a second V(previous) reports no change.
    type: str
    choices: [present, absent, previous]
    default: present
  persist:
    description:
      - Store the applied ruleset under O(state_dir) and enable the boot unit that restores it.
      - With V(false) the ruleset is live until the next reboot and any persisted copy is removed, so a
        reboot never brings back an older policy.
    type: bool
    default: true
  confirm_timeout:
    description:
      - Seconds the host waits for the controller to reconnect and confirm before it rolls back by itself.
      - Unset means no commit-confirmed. Use at least twice the connection timeout (C(ansible_timeout),
        default 10) so a slow reconnect still confirms.
    type: int
  management_auto:
    description:
      - Add the controller's SSH address and the SSH server port (as the host sees them) to the set
        C(mgmt_auto_v4) or C(mgmt_auto_v6) (with O(state=present) or O(state=previous)). The policy role maps
        C(mseg_management_auto) onto it.
      - Nothing is added for a connection that is not SSH (for example C(local)).
    type: bool
    default: true
  state_dir:
    description:
      - Directory for the persisted ruleset, the backup, the recorded state and the lock (0700, root).
    type: path
    default: /etc/mseg
  unit_dir:
    description:
      - Directory of the systemd unit C(mseg-restore.service); it is enabled for C(sysinit.target) there.
    type: path
    default: /etc/systemd/system
  lock_timeout:
    description:
      - Seconds to wait for a concurrent apply on the same host to finish before failing.
    type: int
    default: 300
  _phase:
    description:
      - Internal, set by the action plugin for commit-confirmed; do not set it in a task.
    type: str
    choices: [arm, confirm]
  _txn:
    description:
      - Internal, set by the action plugin for commit-confirmed; do not set it in a task.
    type: str
  _templates:
    description:
      - Internal, set by the action plugin; do not set it in a task.
      - The boot restore script and its systemd unit (C(script), C(unit)), read on the controller from the
        collection's C(plugins/module_utils/apply/templates/), because the module carries only Python to the host.
    type: dict
notes:
  - Needs root (C(become)) and the C(nft) binary on the host; Python 3.8 or later.
  - The module always prepends C(table inet mseg {}) and C(delete table inet mseg) to O(content), so the
    transaction replaces the table whether or not the rendered ruleset carries that preamble itself (a JSON
    O(content) gets the same two commands when its judged objects are loaded).
  - During the O(confirm_timeout) window the rollback lives in the detached worker process. A reboot in
    the window brings back the previous ruleset (nothing was persisted yet); killing the worker
    (C(kill -9)) leaves the new ruleset live without its rollback, and the next run re-applies.
seealso:
  - name: community.general.iptables_state
    description: The commit-confirmed pattern for iptables that this module follows for nftables.
    link: https://docs.ansible.com/ansible/latest/collections/community/general/iptables_state_module.html
"""

EXAMPLES = r"""
- name: Apply the rendered ruleset (persisted, controller kept reachable)
  become: true
  mseg.fleet.nft_apply:
    content: "{{ lookup('ansible.builtin.file', 'rendered/' ~ inventory_hostname ~ '.nft') }}"

- name: Enforce with commit-confirmed rollback after 60 seconds
  become: true
  mseg.fleet.nft_apply:
    content: "{{ lookup('ansible.builtin.file', 'rendered/' ~ inventory_hostname ~ '.nft') }}"
    confirm_timeout: 60

- name: Try a policy without the automatic management entry, safely
  become: true
  mseg.fleet.nft_apply:
    content: "{{ rendered_ruleset }}"
    management_auto: false
    confirm_timeout: 30

- name: Show what would change (run with --check --diff)
  become: true
  mseg.fleet.nft_apply:
    content: "{{ rendered_ruleset }}"
  check_mode: true
  diff: true
  register: mseg_preview

- name: Remove table inet mseg and its boot unit
  become: true
  mseg.fleet.nft_apply:
    state: absent

- name: Roll back to the table the last apply replaced (refused if the live table changed since)
  become: true
  mseg.fleet.nft_apply:
    state: previous
"""

RETURN = r"""
changed:
  description: Whether the live table, the persisted copy or the boot unit changed (or would, in check mode).
  returned: always
  type: bool
sha256:
  description:
    - sha256 of the applied transaction (preamble, content and management elements; with O(state=previous), the
      backup and the management elements); null when the result is no table.
  returned: success
  type: str
  sample: 635cd56f4fc4bdcb1e2e7636826ee0f409f710139de587588c0829f971aec735
rules:
  description: Number of rules in the chains of table inet mseg after the apply.
  returned: success
  type: int
  sample: 42
sets:
  description: Number of named sets and maps in table inet mseg.
  returned: success
  type: int
  sample: 6
elements:
  description: Number of elements in those sets (an interval or a concatenation counts once).
  returned: success
  type: int
  sample: 100002
rolled_back:
  description: Whether a commit-confirmed apply was rolled back because no confirmation arrived.
  returned: always
  type: bool
drift:
  description: Whether the live table differed from what the last apply recorded (a hand edit, a deleted table).
  returned: success
  type: bool
management_peers:
  description: The management entries added to mgmt_auto_v4/mgmt_auto_v6, as C(address . port).
  returned: success
  type: list
  elements: str
  sample: ["192.0.2.10 . 22"]
backup:
  description: Path of the backup of the table that was live before the last apply.
  returned: success
  type: str
  sample: /etc/mseg/ruleset.prev.nft
persisted:
  description: Path of the persisted ruleset, null when O(persist=false) or the result is no table.
  returned: success
  type: str
  sample: /etc/mseg/ruleset.nft
msg:
  description: What happened, in one sentence.
  returned: always
  type: str
  sample: replaced table inet mseg (corrected drift)
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mseg.fleet.plugins.module_utils.apply.confirmed import arm, confirm
from ansible_collections.mseg.fleet.plugins.module_utils.apply.engine import Request, apply, refuse_on_agent_host
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import detect_ssh_peer, ssh_connection_started
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import Paths
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            content=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent", "previous"]),
            persist=dict(type="bool", default=True),
            confirm_timeout=dict(type="int"),
            management_auto=dict(type="bool", default=True),
            state_dir=dict(type="path", default=contract.STATE_DIR),
            unit_dir=dict(type="path", default=contract.UNIT_DIR),
            lock_timeout=dict(type="int", default=300),
            _phase=dict(type="str", choices=["arm", "confirm"]),
            _txn=dict(type="str"),
            _templates=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    phase = params["_phase"]
    try:
        if phase == "confirm":
            result = confirm(Paths(params["state_dir"], params["unit_dir"]), params["_txn"],
                             ssh_connection_started())
            if result.get("rolled_back"):
                module.fail_json(changed=False, **result)
            module.exit_json(**result)
        refuse_on_agent_host(params["state_dir"])
        if params["confirm_timeout"] is not None and params["confirm_timeout"] < 1:
            module.fail_json(msg="confirm_timeout must be at least 1 second (or unset for no commit-confirmed)")
        if params["state"] == "present" and not params["content"]:
            module.fail_json(msg="content is required with state=present: pass the rendered ruleset text")
        peers = []
        if params["management_auto"] and params["state"] != "absent":
            peer = detect_ssh_peer()
            if peer:
                peers.append(peer)
        request = Request(params["content"], params["state"], params["persist"], peers,
                          params["state_dir"], params["unit_dir"], params["lock_timeout"],
                          module.check_mode, module._diff, params["_templates"])
        if phase == "arm" and not module.check_mode:
            result = arm(request, params["_txn"], params["confirm_timeout"])
        else:
            result = apply(request)
    except MsegError as exc:
        module.fail_json(msg=str(exc), rolled_back=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
