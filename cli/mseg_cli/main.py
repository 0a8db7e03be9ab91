# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mseg-cli: the seed manual's verbs.

On the control node (an inventory given with -i or MSEG_INVENTORY) every verb drives the fleet through the
collection's playbooks with ansible-runner (runner.py); ``tag add`` edits the inventory (tags.py). On a managed host
(the host CLI /usr/sbin/mseg exists and no inventory is given, or --local) ``mode set``, ``trace`` and ``status`` act
on this host alone through the host CLI, and the fleet verbs say where to run them.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from mseg_cli import completion, runner, tags
from mseg_cli.errors import BAD_INPUT, DENIED, EXIT_STATUSES, OK, CliError

PROG = "mseg-cli"
QUIET = "no progress lines on standard error"
HOST_CLI = os.environ.get("MSEG_HOST_CLI", "/usr/sbin/mseg")
MODES = ("enforce", "observe", "bypass")
DESCRIPTION = ("The mseg.fleet verbs. On the control node (-i INVENTORY or MSEG_INVENTORY) they drive the fleet "
               "through the collection's playbooks (ansible-runner); on a managed host (%s exists and no inventory "
               "is given, or --local) mode set, trace and status act on that host alone." % HOST_CLI)
EPILOG = "exit status:\n" + "\n".join("  %-4d %s" % pair for pair in EXIT_STATUSES)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and exit status 2, like every other bad input."""

    def error(self, message):
        self.exit(BAD_INPUT, "%s: %s (see %s --help)\n" % (self.prog, message, self.prog))


def _sub(parent, name, help_text, description=None):
    # no abbreviations: tag add takes any --LABEL, and --r must be label r, not --role
    sub = parent.add_parser(name, help=help_text, description=description or help_text, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    # accepted after the verb too; SUPPRESS keeps the value given before the verb
    sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET)
    return sub


def _actions(parent, name, help_text):
    """A verb that only groups actions (tag, mode, policy): its required ACTION subcommands."""
    actions = _sub(parent, name, help_text).add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    return actions


def _limit(parser, what="the hosts to act on"):
    parser.add_argument("--limit", metavar="HOSTS", help="%s: hosts or groups, as ansible-playbook --limit" % what)


def parser():
    root = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("-i", "--inventory", default=os.environ.get("MSEG_INVENTORY"),
                      help="the fleet's inventory (file or directory; default $MSEG_INVENTORY)")
    root.add_argument("--local", action="store_true",
                      help="act on this host alone through %s (the default on a host that has it and no inventory "
                      "is given)" % HOST_CLI)
    root.add_argument("-q", "--quiet", action="store_true", help=QUIET)
    verbs = root.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    tag_verbs = _actions(verbs, "tag", "labels of a host (mseg_tags in its host_vars)")
    add = _sub(tag_verbs, "add", "set labels of one host: --id HOST --role VALUE [--LABEL VALUE ...]",
               "Set labels in the host's own mseg_tags (host_vars/HOST.yml beside the inventory), keeping every other "
               "line, comment and the order of keys, then compile the fleet policy with the edited inventory; the "
               "file is replaced only when the policy compiles. Any label is given as --LABEL VALUE.")
    add.add_argument("--id", required=True, metavar="HOST", help="the host's inventory name")
    add.add_argument("--role", metavar="VALUE", help="the role label (any other label: --LABEL VALUE)")

    mode_verbs = _actions(verbs, "mode", "enforcement mode")
    mode_set = _sub(mode_verbs, "set", "move hosts to enforce, observe or bypass (playbook mseg.fleet.mode)",
                    "Move hosts to a mode (playbook mseg.fleet.mode): the policy is compiled first, so a broken policy "
                    "changes no host. bypass is the emergency bypass table, kept by site and rollout until a mode "
                    "set lifts it. On a host (--local): the host CLI's local override, 'clear' lifts it.")
    mode_set.add_argument("mode", choices=MODES + ("clear",), help="the mode (clear: on a host only)")
    where = mode_set.add_mutually_exclusive_group()
    where.add_argument("--all-zones", action="store_true", help="every host of the inventory")
    where.add_argument("--zone", metavar="ZONE", help="the hosts whose zone label is ZONE")
    where.add_argument("--limit", metavar="HOSTS", help="hosts or groups, as ansible-playbook --limit")

    policy_verbs = _actions(verbs, "policy", "the fleet policy")
    commit = _sub(policy_verbs, "commit", "compile, then roll out a canary first (playbook mseg.fleet.rollout)",
                  "Compile the policy once (a broken policy stops here, no host changed), then apply it in batches, a "
                  "canary first, with a health check after each; an unhealthy batch is rolled back and the rollout "
                  "stops. Every host's ruleset is replaced in one nft transaction: --atomic says so, and is what "
                  "commit always does.")
    commit.add_argument("--atomic", action="store_true", help="one transaction per host, failing batch rolled back "
                        "(always so; accepted for the seed manual's syntax)")
    commit.add_argument("--batches", metavar="LIST", help="batch sizes, default 1,25%%,100%%")
    _limit(commit)

    trace = _sub(verbs, "trace", "would SRC reach DST on a port, and which rule decides (no host contacted)",
                 "Trace flows through the compiled policy (playbook mseg.fleet.trace), or on a host (--local) send "
                 "one real packet through its ruleset with the host CLI (addresses then).")
    trace.add_argument("--src", required=True, help="a host, a group, labels (role=web,env=prod), all, or an address")
    trace.add_argument("--dst", required=True, help="as --src")
    trace.add_argument("--port", required=True, help="tcp/5432, udp/53, icmp")

    discover = _sub(verbs, "discover", "propose a label-based policy from observed traffic (mseg.fleet.discover)")
    discover.add_argument("--duration", default="15m", help="the window: seconds, or 30s, 15m, 1h (default 15m)")
    discover.add_argument("--dir", default="mseg-discovery", help="where the proposal goes (default ./mseg-discovery)")
    _limit(discover)

    status = _sub(verbs, "status", "what each host's live table is (on a host: the host CLI's status)")
    status.add_argument("--no-become", action="store_true", help="read the tables without privilege escalation")
    _limit(status)

    comp = _sub(verbs, "completion", "print a shell completion script: eval \"$(mseg-cli completion bash)\"")
    comp.add_argument("shell", choices=("bash",))
    return root


def _labels(args, extra):
    """The labels of ``tag add``: --role and every --LABEL VALUE pair left over by argparse, in order."""
    labels = {}
    if args.role is not None:
        labels["role"] = args.role
    rest = list(extra)
    while rest:
        flag = rest.pop(0)
        name = flag[2:].split("=", 1)[0] if flag.startswith("--") else ""
        if not tags.LABEL.match(name):
            raise CliError("tag add: %s is not --LABEL VALUE (a label is letters, digits, _ . -)" % flag)
        if "=" in flag:
            value = flag.split("=", 1)[1]
        elif rest:
            value = rest.pop(0)
        else:
            raise CliError("tag add: --%s needs a value" % name)
        labels[name] = value
    if not labels:
        raise CliError("tag add: give at least one label, e.g. --role database")
    return labels


def _inventory(args):
    if not args.inventory:
        raise CliError("%s %s acts on the fleet: give the inventory with -i INVENTORY or MSEG_INVENTORY on the "
                       "control node" % (PROG, args.verb))
    return args.inventory


def tag_add(args, labels):
    inventory = _inventory(args)
    hosts, _groups = runner.inventory_hosts(inventory)
    if args.id not in hosts:
        raise CliError("tag add: host %s is not in the inventory %s; check the name (ansible-inventory -i %s --graph)"
                       % (args.id, inventory, inventory))
    path = tags.host_vars_file(inventory, args.id)
    before = tags.read(path)
    if before is None or "mseg_tags" not in tags.load(before, path):
        _refuse_inline_tags(inventory, args.id)
    text = tags.edit(before, labels, path)
    _validate(inventory, path, text, args.quiet)
    tags.replace(path, text, before)
    print("%s: %s set in %s; the policy compiles with it (mseg-cli policy commit --atomic applies it)"
          % (args.id, ", ".join("%s=%s" % pair for pair in labels.items()), path))
    return OK


def _refuse_inline_tags(inventory, host):
    """A host whose mseg_tags are written in the inventory file itself: a host_vars file would hide them."""
    from ansible.inventory.manager import InventoryManager  # pylint: disable=import-outside-toplevel
    from ansible.parsing.dataloader import DataLoader  # pylint: disable=import-outside-toplevel
    from ansible.errors import AnsibleError  # pylint: disable=import-outside-toplevel
    try:
        found = InventoryManager(DataLoader(), sources=[inventory]).get_host(host)
    except AnsibleError as exc:
        raise CliError("cannot parse the inventory %s: %s; fix it, nothing was changed" % (inventory, exc))
    if found is not None and "mseg_tags" in found.vars:
        raise CliError("tag add: %s's mseg_tags are written in the inventory source itself (%s); a host_vars file "
                       "would hide them: move them to %s, or edit them there; nothing was changed"
                       % (host, inventory, tags.host_vars_file(inventory, host)))


def _validate(inventory, path, text, quiet):
    """Compile the fleet with ``text`` in place of ``path``, in a copy of the inventory; CliError if it fails."""
    base = inventory if os.path.isdir(inventory) else os.path.dirname(os.path.abspath(inventory))
    base = os.path.abspath(base)
    scratch = tempfile.mkdtemp(prefix="mseg-cli-tag-")
    try:
        copy = os.path.join(scratch, "inventory")
        if os.path.isdir(inventory):
            shutil.copytree(base, copy, symlinks=True)
        else:
            # an inventory file: only what Ansible reads beside it, not the whole directory it sits in
            os.makedirs(copy)
            shutil.copy2(inventory, copy)
            for name in ("group_vars", "host_vars"):
                if os.path.isdir(os.path.join(base, name)):
                    shutil.copytree(os.path.join(base, name), os.path.join(copy, name), symlinks=True)
        copied = os.path.join(copy, os.path.relpath(os.path.abspath(path), base))
        os.makedirs(os.path.dirname(copied), exist_ok=True)
        with open(copied, "w", encoding="utf-8") as handle:
            handle.write(text)
        copied_inventory = copy if os.path.isdir(inventory) else os.path.join(copy, os.path.basename(inventory))
        if not quiet:
            sys.stderr.write("compiling the fleet policy with the new labels ...\n")
        result = runner.run("mseg.fleet.render", copied_inventory, quiet=True,
                            extravars={"mseg_render_dir": os.path.join(scratch, "render")})
        try:
            result.status()
        except CliError as exc:
            if exc.status != BAD_INPUT:
                raise
            raise CliError("tag add: with these labels the policy or inventory is invalid, so %s was not changed:\n%s"
                           % (path, str(exc).replace(copy, base)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mode_set(args):
    if args.mode == "clear":
        raise CliError("mode set clear lifts a host's local override: run it on that host (%s --local mode set "
                       "clear); on the fleet, set a mode" % PROG)
    if not (args.all_zones or args.zone or args.limit):
        raise CliError("mode set %s: say which hosts: --all-zones, --zone ZONE or --limit HOSTS" % args.mode)
    inventory = _inventory(args)
    hosts, groups = runner.inventory_hosts(inventory)
    if args.limit:
        runner.check_pattern(args.limit, hosts, groups, "--limit")
    extravars = {"mseg_mode": args.mode}
    if args.zone:
        extravars["mseg_zone"] = args.zone
    result = runner.run("mseg.fleet.mode", inventory, extravars=extravars, limit=args.limit, quiet=args.quiet)
    status = result.status()
    nobody = "no host changed (already in that mode%s)" % (
        ", or no host carries zone=%s" % args.zone if args.zone else "")
    print("mode %s set on %s" % (args.mode, ", ".join(_changed_hosts(result)) or nobody))
    return status


def _changed_hosts(result):
    stats = [e["event_data"] for e in result.events if e.get("event") == "playbook_on_stats"]
    return sorted((stats[-1].get("changed") or {}) if stats else {})


def policy_commit(args):
    inventory = _inventory(args)
    hosts, groups = runner.inventory_hosts(inventory)
    if args.limit:
        runner.check_pattern(args.limit, hosts, groups, "--limit")
    extravars = {}
    if args.batches:
        extravars["mseg_rollout_batches"] = [int(b) if b.strip().isdigit() else b.strip()
                                             for b in args.batches.split(",")]
    result = runner.run("mseg.fleet.rollout", inventory, extravars=extravars, limit=args.limit, quiet=args.quiet)
    status = result.status()
    print("policy committed; hosts changed: %s" % (", ".join(_changed_hosts(result)) or "none (already applied)"))
    return status


def trace(args):
    inventory = _inventory(args)
    result = runner.run("mseg.fleet.trace", inventory, quiet=True, extravars={
        "mseg_trace_src": args.src, "mseg_trace_dst": args.dst, "mseg_trace_port": args.port})
    result.status()
    answer = result.answer("Trace the flows")
    for line in result.answer("Show the verdicts").get("msg") or []:
        print(line)
    return DENIED if answer.get("denied") else OK


def discover(args):
    inventory = _inventory(args)
    hosts, groups = runner.inventory_hosts(inventory)
    if args.limit:
        runner.check_pattern(args.limit, hosts, groups, "--limit")
    result = runner.run("mseg.fleet.discover", inventory, limit=args.limit, quiet=args.quiet, extravars={
        "mseg_discover_duration": args.duration, "mseg_discover_dir": os.path.abspath(args.dir)})
    status = result.status()
    for line in result.answer("Show the summary").get("msg") or []:
        print(line)
    return status


def status(args):
    inventory = _inventory(args)
    hosts, groups = runner.inventory_hosts(inventory)
    if args.limit:
        runner.check_pattern(args.limit, hosts, groups, "--limit")
    result = runner.run(inventory=inventory, module="mseg.fleet.nft_counters", host_pattern=args.limit or "all",
                        quiet=args.quiet, cmdline=None if args.no_become else "--become")
    for data in sorted(result.results("runner_on_ok"), key=lambda d: d.get("host", "")):
        res = data.get("res") or {}
        if not res.get("table_present"):
            what = "no table inet mseg (not rolled out)"
        else:
            what = "table inet mseg, %d counters%s" % (
                len(res.get("counters") or {}),
                ", markers: %s" % ", ".join(res["markers"]) if res.get("markers") else "")
        print("%-20s %s" % (data.get("host"), what))
    return result.status()


def local(args):
    """The verbs a host answers alone, through its host CLI."""
    if args.verb == "status":
        argv = [HOST_CLI, "status"]
    elif args.verb == "mode":
        argv = [HOST_CLI, "mode", args.mode]
    elif args.verb == "trace":
        argv = [HOST_CLI, "trace", "--src", args.src, "--dst", args.dst, "--port", args.port]
    else:
        raise CliError("%s %s is a fleet verb: run it on the control node with -i INVENTORY (on this host: status, "
                       "mode set, trace)" % (PROG, args.verb))
    if not os.path.exists(HOST_CLI):
        raise CliError("--local: %s is not here (the agent role installs it on agent hosts); on the control node "
                       "give -i INVENTORY instead" % HOST_CLI)
    return subprocess.call(argv)


FLEET = {"mode": mode_set, "policy": policy_commit, "trace": trace, "discover": discover, "status": status}


def main(argv=None):
    """Entry point of ``mseg-cli``: returns the exit status; errors are one message, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser().parse_known_args(argv)
    try:
        if extra and not (args.verb == "tag" and args.action == "add"):
            parser().error("unrecognized arguments: %s" % " ".join(extra))
        if args.verb == "completion":
            sys.stdout.write(completion.bash(parser()))
            return OK
        if args.local or (not args.inventory and os.path.exists(HOST_CLI)):
            return local(args)
        if args.verb == "tag":
            return tag_add(args, _labels(args, extra))
        return FLEET[args.verb](args)
    except CliError as exc:
        sys.stderr.write("%s: %s\n" % (PROG, exc))
        return exc.status
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted; the inventory is as it was\n" % PROG)
        return 130
    except OSError as exc:
        sys.stderr.write("%s: %s: %s\n" % (PROG, getattr(exc, "filename", None) or args.verb, exc.strerror or exc))
        return BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
