# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the collection's playbooks (and ad-hoc modules) with ansible-runner, the engine AWX runs jobs with: a
private data directory of its own per run, progress lines from the job's events, Ctrl-C as a clean cancel, and the
outcome as mseg-cli's exit status.

The collection is found the way ansible-playbook finds it (ANSIBLE_COLLECTIONS_PATH, ansible.cfg, ~/.ansible); the
Ansible commands are those beside this Python when it has them (a virtualenv), else those on PATH.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from mseg_cli.errors import BAD_INPUT, FAILED, INTERRUPTED, OK, CliError

# Tasks that only check the input (the compile, the trace, the playbooks' asserts): their failure means bad input,
# and the playbooks run them before any host changes.
CHECKING_ACTIONS = ("mseg.fleet.compile", "mseg.fleet.trace", "ansible.builtin.assert", "assert")


def _environment():
    """What the Ansible commands get on top of this environment: the virtualenv's commands first, no colours."""
    path = os.environ.get("PATH", os.defpath)
    here = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(here, "ansible-playbook")):
        path = here + os.pathsep + path
    return {"PATH": path, "ANSIBLE_NOCOLOR": os.environ.get("ANSIBLE_NOCOLOR", "1")}


def inventory_hosts(inventory):
    """``(hosts, groups)`` of ``inventory``, read with ansible-inventory, which must parse every source; CliError
    naming the inventory and Ansible's reason otherwise."""
    if not os.path.exists(inventory):
        raise CliError("inventory %s: no such file or directory; give it with -i or MSEG_INVENTORY" % inventory)
    env = dict(os.environ, **_environment())
    env.update(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="true")
    command = shutil.which("ansible-inventory", path=env["PATH"]) or "ansible-inventory"
    try:
        proc = subprocess.run([command, "-i", inventory, "--list", "--export"], capture_output=True, text=True,
                              env=env, timeout=300, check=False)
    except OSError as exc:
        raise CliError("cannot run ansible-inventory (%s); install ansible-core beside mseg-cli" % exc)
    if proc.returncode != 0:
        reason = " ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())
        raise CliError("cannot parse the inventory %s: %s; fix it (ansible-inventory -i %s --list shows it), nothing "
                       "was changed" % (inventory, reason or "ansible-inventory failed", inventory))
    listed = json.loads(proc.stdout)
    hosts = set(listed.get("_meta", {}).get("hostvars", {}))
    groups = set()
    for name, group in listed.items():
        if name != "_meta" and isinstance(group, dict):
            groups.add(name)
            hosts.update(group.get("hosts") or ())
    return hosts, groups


def check_pattern(pattern, hosts, groups, option):
    """Every plain name of a host pattern (a, b:c) must be a host or a group; wildcards, ranges, ! and & are
    Ansible's to resolve."""
    for item in pattern.replace(",", ":").split(":"):
        item = item.strip()
        if not item or any(mark in item for mark in "*?[]~!&"):
            continue
        if item not in hosts and item not in groups:
            known = sorted(hosts)
            raise CliError("%s: %s is neither a host nor a group of the inventory (hosts: %s%s); check the name"
                           % (option, item, ", ".join(known[:10]), " ..." if len(known) > 10 else ""))


class Progress(object):
    """Prints one line per task and one per host result, on standard error (quiet: nothing)."""

    def __init__(self, quiet):
        self.quiet = quiet

    def __call__(self, event):
        if self.quiet:
            return True
        kind = event.get("event")
        data = event.get("event_data", {})
        if kind == "playbook_on_play_start":
            self._say("== %s" % data.get("play", ""))
        elif kind == "playbook_on_task_start":
            self._say("-- %s" % data.get("task", ""))
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            result = data.get("res") or {}
            word = {"runner_on_ok": "changed" if result.get("changed") else "ok",
                    "runner_on_failed": "FAILED", "runner_on_unreachable": "UNREACHABLE"}[kind]
            if kind == "runner_on_failed" and data.get("ignore_errors"):
                word = "failed (ignored)"
            self._say("   %-16s %s" % (word, data.get("host", "")))
        return True

    @staticmethod
    def _say(line):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class Run(object):
    """One finished ansible-runner job: its status, events, and what the collection's tasks answered."""

    def __init__(self, runner, interrupted):
        self.runner = runner
        self.interrupted = interrupted
        self.events = list(runner.events)
        self.output = runner.stdout.read() if runner.stdout else ""

    def results(self, kind):
        return [e["event_data"] for e in self.events if e.get("event") == kind]

    def answer(self, task):
        """The result (``res``) of the first host that ran ``task``."""
        for data in self.results("runner_on_ok"):
            if data.get("task") == task:
                return data.get("res") or {}
        return {}

    def problems(self):
        """One line per failed or unreachable host: host, task, message."""
        lines = []
        for kind in ("runner_on_failed", "runner_on_unreachable"):
            for data in self.results(kind):
                if data.get("ignore_errors"):
                    continue
                res = data.get("res") or {}
                lines.append("%s: %s: %s" % (data.get("host"), data.get("task"), str(res.get("msg", "")).strip()))
        return lines

    def bad_input(self):
        """Whether the run failed only in the tasks that check the input (nothing was changed)."""
        failed = [d for d in self.results("runner_on_failed") if not d.get("ignore_errors")]
        return bool(failed) and all(d.get("task_action") in CHECKING_ACTIONS for d in failed) \
            and not self.results("runner_on_unreachable")

    def status(self):
        """mseg-cli's exit status for this run; CliError with the reason when it failed."""
        if self.interrupted or self.runner.status == "canceled":
            raise CliError("interrupted: the run was stopped; the inventory is as it was, hosts the run had reached "
                           "may be part way: run the same verb again", INTERRUPTED)
        if self.runner.status == "successful" and not self.problems():
            return OK
        problems = self.problems()
        if not problems:
            errors = [line.strip() for line in self.output.splitlines() if "ERROR" in line]
            raise CliError("ansible-playbook failed before any task ran: %s"
                           % (" ".join(errors) or "status %s, rc %s" % (self.runner.status, self.runner.rc)),
                           BAD_INPUT)
        status = BAD_INPUT if self.bad_input() else FAILED
        suffix = "nothing was changed" if status == BAD_INPUT else "the other hosts finished or were not started"
        raise CliError("\n".join(problems) + "\n(%s)" % suffix, status)


def run(playbook=None, inventory=None, extravars=None, limit=None, quiet=False, module=None, module_args=None,
        host_pattern=None, cmdline=None):
    """Run ``playbook`` (a collection playbook, e.g. mseg.fleet.mode) or ``module`` ad hoc on ``inventory``;
    returns a ``Run``. Ctrl-C cancels the job (ansible-runner stops ansible-playbook) and the Run says so."""
    import ansible_runner  # pylint: disable=import-outside-toplevel  # only the fleet verbs need it

    interrupted = []

    def on_interrupt(_signum, _frame):
        interrupted.append(True)

    private = tempfile.mkdtemp(prefix="mseg-cli-")
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        kwargs = dict(private_data_dir=private, inventory=os.path.abspath(inventory), quiet=True,
                      envvars=_environment(), event_handler=Progress(quiet),
                      cancel_callback=lambda: bool(interrupted), extravars=extravars or {})
        if limit:
            kwargs["limit"] = limit
        if cmdline:
            kwargs["cmdline"] = cmdline
        if module:
            kwargs.update(module=module, module_args=module_args or "", host_pattern=host_pattern or "all")
        else:
            kwargs["playbook"] = playbook
        runner = ansible_runner.run(**kwargs)
        result = Run(runner, bool(interrupted))
    finally:
        signal.signal(signal.SIGINT, previous)
        shutil.rmtree(private, ignore_errors=True)
    return result
