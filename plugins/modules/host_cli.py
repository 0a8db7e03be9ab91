#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: host_cli
short_description: Run a verb of the agent's host CLI (mseg status, mode, rollback, trace) and return its answer
version_added: 0.2.0
description:
  - Runs the operator's CLI that the P(mseg.fleet.agent#role) role installs on an agent host (C(/usr/sbin/mseg), the
    name and directory come from the collection's wire contract) with C(--json), and returns its answer parsed.
    Playbooks call the host CLI through this module, never by spelling the command out.
  - V(status) returns mode, override, serial, bundle, last poll, last apply, last error and the named counters.
  - V(mode) sets a local override (V(bypass), V(observe), V(enforce)) or ends it (V(clear)); V(rollback) applies the
    previous good bundle and holds it until V(clear). Both report C(changed) when the override or the live table
    changed.
  - V(trace) sends one real packet through the host's own ruleset in scratch network namespaces and names the
    deciding counter; a dropped packet is an answer (C(answer.allowed) is false), not a failure.
  - A failure of the CLI (no agent on the host, no bundle to roll back to, a bad address) fails the task with the
    CLI's own one-line message.
author:
  - mseg.fleet contributors (@mseg-fleet)
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
attributes:
  check_mode:
    support: partial
    description: Reports whether a changing verb would change the host, without running it.
    details:
      - V(status) and V(trace) run as usual (they change nothing on the host).
      - V(mode) and V(rollback) do not run; C(changed) is predicted from the host's status (V(rollback) always
        predicts a change).
  platform:
    description: Linux hosts that run the mseg.fleet agent.
options:
  command:
    description: The verb of the host CLI to run.
    type: str
    required: true
    choices: [status, mode, rollback, trace]
  mode:
    description: For O(command=mode), the local override to set, or V(clear) to follow the controllers again.
    type: str
    choices: [bypass, observe, enforce, clear]
  src:
    description: For O(command=trace), the source address (this host's own for egress).
    type: str
  dst:
    description: For O(command=trace), the destination address (this host's own for ingress).
    type: str
  port:
    description: For O(command=trace), V(tcp/<port>), V(udp/<port>) or V(icmp).
    type: str
notes:
  - Run it with C(become), as root; the changing verbs drop to the agent's user with only C(CAP_NET_ADMIN) by
    themselves.
seealso:
  - module: mseg.fleet.trace
    description: Predicts the same answer on the controller from the compiled policy, without touching a host.
"""

EXAMPLES = r"""
- name: Read the agent's status
  mseg.fleet.host_cli:
    command: status
  register: agent_status

- name: Open the host in an emergency, with every controller unreachable
  mseg.fleet.host_cli:
    command: mode
    mode: bypass

- name: Follow the controllers again
  mseg.fleet.host_cli:
    command: mode
    mode: clear

- name: Ask the host's own ruleset whether db traffic from web-01 gets in
  mseg.fleet.host_cli:
    command: trace
    src: 10.0.1.5
    dst: "{{ ansible_host }}"
    port: tcp/5432
  register: traced

- name: Show the deciding rule
  ansible.builtin.debug:
    msg: "{{ 'allowed' if traced.answer.allowed else 'dropped' }} by {{ traced.answer.decided_by }}"
"""

RETURN = r"""
answer:
  description:
    - The CLI's JSON answer. V(status) - the agent's status (C(mode), C(serial), C(bundle), C(override),
      C(last_poll), C(last_apply), C(last_error), C(counters)). V(mode) and V(rollback) - C(changed), C(msg),
      C(mode) (the mode the host now runs) and C(override). V(trace) - C(direction), C(allowed), C(result),
      C(decided_by), C(logged_by), C(ruleset).
    - In check mode, for V(mode) and V(rollback), the status the prediction was made from.
  returned: always
  type: dict
  sample: {"allowed": false, "decided_by": ["default_in"], "direction": "ingress", "result": "timeout"}
cmd:
  description: The command line that ran.
  returned: always
  type: list
  elements: str
  sample: [/usr/sbin/mseg, trace, --src, 10.0.1.5, --dst, 10.0.2.7, --port, tcp/5432, --json]
rc:
  description: Its exit status (V(trace) exits 3 when the packet is dropped).
  returned: always
  type: int
  sample: 0
msg:
  description: What happened, in words.
  returned: always
  type: str
  sample: "mode bypass set locally: replaced table inet mseg; 'mseg mode clear' returns to the controllers' policy"
"""

import json  # noqa: E402
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract  # noqa: E402

MODES = ["bypass", "observe", "enforce", "clear"]
TRACE_OPTIONS = ("src", "dst", "port")
CHANGING = ("mode", "rollback")


def cli_path():
    return os.path.join(contract.HOST_CLI_DIR, contract.HOST_CLI)


def cli_argv(params, path=None):
    """The host CLI's command line for the module's options: the verb, its arguments, ``--json``."""
    argv = [path or cli_path(), params["command"]]
    if params["command"] == "mode":
        argv.append(params["mode"])
    elif params["command"] == "trace":
        for name in TRACE_OPTIONS:
            argv += ["--%s" % name, params[name]]
    return argv + ["--json"]


def read_answer(rc, out, err):
    """(answer, None) for a JSON answer (whatever the exit status: trace exits 3 for a drop), else (None, why)."""
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return answer, None
    lines = [line for line in (err or out or "").splitlines() if line.strip()]
    return None, lines[-1].strip() if lines else "exit status %d and no answer" % rc


def predict_change(params, status):
    """Whether ``mode``/``rollback`` would change the host, from its status (check mode)."""
    override = status.get("override") or {}
    if params["command"] == "rollback":
        return True
    if params["mode"] == "clear":
        return bool(override)
    if params["mode"] == "bypass":
        return override.get("kind") != "bypass"
    return not (override.get("kind") == "mode" and override.get("mode") == params["mode"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="str", required=True, choices=list(contract.HOST_CLI_COMMANDS)),
            mode=dict(type="str", choices=MODES),
            src=dict(type="str"),
            dst=dict(type="str"),
            port=dict(type="str"),
        ),
        required_if=[("command", "mode", ["mode"]), ("command", "trace", list(TRACE_OPTIONS))],
        supports_check_mode=True,
    )
    params = module.params
    path = cli_path()
    if not os.access(path, os.X_OK):
        module.fail_json(msg="%s is not installed on this host: install the agent with the mseg.fleet.agent role"
                         % path, cmd=[path], rc=None)

    def run(argv):
        rc, out, err = module.run_command(argv)
        answer, problem = read_answer(rc, out, err)
        if answer is None:
            module.fail_json(msg=problem, cmd=argv, rc=rc)
        return rc, answer

    argv = cli_argv(params, path)
    if module.check_mode and params["command"] in CHANGING:
        _rc, status = run(cli_argv({"command": "status"}, path))
        module.exit_json(changed=predict_change(params, status), answer=status, cmd=argv, rc=0,
                         msg="check mode: %s was not run" % " ".join(argv))
    rc, answer = run(argv)
    changed = bool(answer.get("changed")) if params["command"] in CHANGING else False
    msg = answer.get("msg") or "%s %s answered" % (contract.HOST_CLI, params["command"])
    module.exit_json(changed=changed, answer=answer, cmd=argv, rc=rc, msg=msg)


if __name__ == "__main__":
    main()
