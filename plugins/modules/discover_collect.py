#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: discover_collect
short_description: Collect a window of the host's connections for discovery (conntrack and listening sockets)
version_added: 0.3.0
description:
  - The host side of the playbook C(mseg.fleet.discover) (docs/discovery.md). V(started) runs a collector for
    O(duration) seconds as a transient systemd unit, C(mseg-discover.service); V(collected) waits for it to finish
    and returns its flow records; V(absent) stops it and removes everything it wrote.
  - The collector dumps the kernel's connection tracking table over netlink every O(interval) seconds, counts each
    connection once, and reads the listening sockets from C(/proc/net) to tell servers from clients. No packet and
    no payload is read; the records are the engine's CSV format (C(src,dst,proto,dport,count,listening)).
  - Connection tracking only sees what a ruleset makes the kernel track, so V(started) requires the mseg.fleet
    table on the host (put it in observe mode first; C(mseg.fleet.mode -e mseg_mode=observe)). It never loads a
    table of its own.
  - V(collected) also returns the audit records the host's drop log wrote inside the window (RV(audit)). In observe
    mode they are the connections the current policy would drop in enforce, read from the trusted record channel (the
    runtime logs of the agent and of C(mseg-droplog.service)), never from the kernel log.
  - Bounded and temporary. The unit runs niced, with idle I/O priority, O(memory_max), O(cpu_quota) and a run-time
    limit (C(RuntimeMaxSec), O(duration) plus a minute); it keeps at most O(max_flows) distinct flows (more are
    counted in RV(status.overflow), not kept). Its files live in C(/run/mseg-discover) (root only, tmpfs, gone at
    reboot), and a transient timer, C(mseg-discover-cleanup.timer), removes them O(grace) seconds after the window
    even when the play that started it was interrupted.
  - Sandboxed as the host's mseg.fleet services are (docs/security.md); it runs as root with C(CAP_NET_ADMIN) alone
    in its bounding set (a conntrack dump over netlink needs it; the listening sockets in C(/proc/net) need none),
    netlink sockets only, no new privileges, a read-only system but for C(/run/mseg-discover), private C(/tmp), no
    devices, home directories or kernel tunables, and the system services' system calls only.
author:
  - mseg.fleet contributors (@mseg-fleet)
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
attributes:
  check_mode:
    description: Reports whether a collector would be started or removed; V(collected) reads in check mode too.
options:
  state:
    description:
      - V(started) starts a collector (replacing one left by an earlier run).
      - V(collected) waits up to O(wait) seconds for the collector to finish, then returns its records.
      - V(absent) stops the collector and its cleanup timer and removes its files.
    type: str
    choices: [started, collected, absent]
    default: started
  duration:
    description: The window in seconds (V(started)).
    type: int
    default: 900
  interval:
    description: Seconds between two dumps of the conntrack table (V(started)).
    type: float
    default: 5.0
  max_flows:
    description: The most distinct flows the collector keeps (V(started)).
    type: int
    default: 100000
  memory_max:
    description: The unit's C(MemoryMax) (V(started)).
    type: str
    default: 64M
  cpu_quota:
    description: The unit's C(CPUQuota) (V(started)).
    type: str
    default: 10%
  grace:
    description: Seconds after the window at which the cleanup timer removes the collector's files (V(started)).
    type: int
    default: 900
  wait:
    description: Seconds V(collected) waits for a collector that is still running.
    type: int
    default: 120
"""

EXAMPLES = r"""
- name: Collect for 15 minutes
  mseg.fleet.discover_collect:
    duration: 900
  become: true

- name: Wait for the window to end (on the controller)
  ansible.builtin.pause:
    seconds: 900

- name: Read the records
  mseg.fleet.discover_collect:
    state: collected
  become: true
  register: collected

- name: Remove the collector
  mseg.fleet.discover_collect:
    state: absent
  become: true
"""

RETURN = r"""
records:
  description: The flow records (V(collected)), CSV with a header line, as the discovery engine reads them.
  returned: when state is collected
  type: str
  sample: "src,dst,proto,dport,count,listening\n10.0.1.1,10.0.2.1,tcp,8080,40,true\n"
status:
  description: The collector's own account (V(collected)).
  returned: when state is collected
  type: dict
  contains:
    samples:
      description: How many dumps of the conntrack table it took.
      type: int
      returned: always
    flows:
      description: Distinct flows kept.
      type: int
      returned: always
    overflow:
      description: Connections not kept because O(max_flows) distinct flows were reached.
      type: int
      returned: always
    finished:
      description: Whether it ran the whole window (false when it was stopped early).
      type: bool
      returned: always
audit:
  description: The drop log's audit records of the window (V(collected)), for the control node to judge again.
  returned: when state is collected
  type: dict
  contains:
    from:
      description: The window's start, UTC, as the runtime log writes time.
      type: str
      returned: always
      sample: "2026-12-06T03:00:00Z"
    to:
      description: The window's end (the collector's last sample), UTC.
      type: str
      returned: always
    lines:
      description: The C(Policy Audit) lines logged from RV(audit.from) to RV(audit.to), at most 200,000.
      type: list
      elements: str
      returned: always
    overflow:
      description: Audit lines of the window not returned because of that bound.
      type: int
      returned: always
    unreadable:
      description: Runtime logs that exist but could not be read, with why.
      type: list
      elements: str
      returned: always
unit:
  description: The collector's transient unit.
  returned: always
  type: str
  sample: mseg-discover.service
"""

import inspect  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.mseg.fleet.plugins.module_utils.host import auditlog  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.host import discover as collector  # noqa: E402

RUN_DIR = "/run/mseg-discover"
UNIT = "mseg-discover.service"
CLEANUP = "mseg-discover-cleanup"
SCRIPT = "collector.py"
RECORDS = "records.csv"
TABLE = ["list", "table", "inet", "mseg"]
# The collector's sandbox (the shared one of the agent and the drop log, roles/agent's mseg-hardening.j2): root, but
# with CAP_NET_ADMIN alone (the kernel answers a conntrack dump over netlink only to it; /proc/net/{tcp,udp}[6],
# fib_trie and if_inet6 need no capability), netlink sockets only, a read-only system where only its own directory
# is writable, no devices, no kernel, clock or hostname changes, no new privileges, system services' calls only.
SANDBOX = (
    ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
    ("NoNewPrivileges", "yes"),
    ("UMask", "0077"),
    ("ProtectSystem", "strict"),
    ("ReadWritePaths", RUN_DIR),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictAddressFamilies", "AF_NETLINK"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
)


def unit_argv(module, params):
    """systemd-run's command lines: the collector and the timer that removes its files after the window."""
    systemd_run = module.get_bin_path("systemd-run")
    python = sys.executable or module.get_bin_path("python3")   # the interpreter Ansible runs modules with
    window = params["duration"]
    run = [systemd_run, "--unit", UNIT, "--description", "mseg.fleet discovery collector", "--collect",
           "--nice=10", "-p", "IOSchedulingClass=idle", "-p", "MemoryMax=%s" % params["memory_max"],
           "-p", "CPUQuota=%s" % params["cpu_quota"], "-p", "RuntimeMaxSec=%d" % (window + 60)]
    for name, value in SANDBOX:
        run += ["-p", "%s=%s" % (name, value)]
    run += [python, os.path.join(RUN_DIR, SCRIPT), "--seconds", str(window), "--interval", str(params["interval"]),
            "--max-flows", str(params["max_flows"]), "--out", os.path.join(RUN_DIR, RECORDS)]
    cleanup = [systemd_run, "--unit", CLEANUP, "--description", "mseg.fleet discovery collector cleanup", "--collect",
               "--on-active=%d" % (window + params["grace"]), "--timer-property=AccuracySec=1s",
               "/bin/rm", "-rf", RUN_DIR]
    return run, cleanup


def active(module, unit):
    rc, out, _err = module.run_command(["systemctl", "is-active", unit])
    return out.strip() in ("active", "activating", "deactivating", "reloading")


def remove(module):
    """Stop the collector and its timer, remove the files; True when anything was there."""
    found = os.path.exists(RUN_DIR) or active(module, UNIT) or active(module, CLEANUP + ".timer")
    if found and not module.check_mode:
        module.run_command(["systemctl", "stop", UNIT, CLEANUP + ".timer", CLEANUP + ".service"])
        module.run_command(["systemctl", "reset-failed", UNIT, CLEANUP + ".timer", CLEANUP + ".service"])
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    return found


def start(module, params):
    if not module.get_bin_path("systemd-run"):
        module.fail_json(msg="systemd-run is not installed: the collector runs as a transient systemd unit, so "
                             "the host needs systemd", unit=UNIT)
    nft = module.get_bin_path("nft")
    rc = module.run_command([nft] + TABLE)[0] if nft else 1
    if rc != 0:
        module.fail_json(msg="no mseg.fleet table (inet mseg) here, so the kernel tracks no connection to collect: "
                             "put the host in observe mode first with ansible-playbook mseg.fleet.mode -e "
                             "mseg_mode=observe --limit THIS_HOST (an allow-all policy when mseg_policy is not set "
                             "yet), then run discover again", unit=UNIT)
    if module.check_mode:
        return
    remove(module)
    os.mkdir(RUN_DIR, 0o700)
    fd = os.open(os.path.join(RUN_DIR, SCRIPT), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(inspect.getsource(collector))
    run, cleanup = unit_argv(module, params)
    for argv in (cleanup, run):   # the timer first: from here on the files go away even if this play stops
        rc, out, err = module.run_command(argv)
        if rc != 0:
            remove(module)
            module.fail_json(msg="cannot start the collector: %s failed: %s" % (argv[0], (err or out).strip()),
                             unit=UNIT)


def collect(module, wait):
    deadline = time.time() + wait
    while active(module, UNIT) and time.time() < deadline:
        time.sleep(1)
    path = os.path.join(RUN_DIR, RECORDS)
    try:
        with open(path) as handle:
            records = handle.read()
        with open(path + ".json") as handle:
            status = json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        module.fail_json(msg="the collector left no records (%s): it was not started, was removed (after its grace "
                             "period), or failed (journalctl -u %s)" % (exc, UNIT), unit=UNIT)
    if active(module, UNIT):
        status["finished"] = False
    return records, status


def audit(status):
    """The drop log's audit lines of the collector's window (from its start to its last sample)."""
    lines, overflow, unreadable = auditlog.window_lines(status["started"], status["updated"])
    return {"from": auditlog.window_time(status["started"]), "to": auditlog.window_time(status["updated"]),
            "lines": lines, "overflow": overflow, "unreadable": unreadable}


def main():
    module = AnsibleModule(argument_spec=dict(
        state=dict(type="str", choices=["started", "collected", "absent"], default="started"),
        duration=dict(type="int", default=900),
        interval=dict(type="float", default=5.0),
        max_flows=dict(type="int", default=100000),
        memory_max=dict(type="str", default="64M"),
        cpu_quota=dict(type="str", default="10%"),
        grace=dict(type="int", default=900),
        wait=dict(type="int", default=120),
    ), supports_check_mode=True)
    params = module.params
    problems = ["%s must be at least %s, not %s" % (name, low, params[name])
                for name, low in (("duration", 1), ("interval", 0.5), ("max_flows", 1), ("grace", 0), ("wait", 0))
                if params[name] < low]
    if problems:
        module.fail_json(msg="mseg.fleet.discover_collect: " + "; ".join(problems), unit=UNIT)
    state = params["state"]
    if state == "started":
        start(module, params)
        module.exit_json(changed=True, unit=UNIT)
    if state == "collected":
        records, status = collect(module, params["wait"])
        module.exit_json(changed=False, unit=UNIT, records=records, status=status, audit=audit(status))
    module.exit_json(changed=remove(module), unit=UNIT)


if __name__ == "__main__":
    main()
