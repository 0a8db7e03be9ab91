# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one host CLI, run on an agent host: ``mseg-agent`` (the service's command) and ``mseg`` (the operator's).

Its verbs are the table ``VERBS`` below: name, the program it belongs to, help, handler and arguments. The parser
is built from it, the wire contract's ``AGENT_COMMANDS`` and ``HOST_CLI_COMMANDS`` name the same verbs (a unit test
holds them together), and ``mseg.fleet.host_cli`` calls the operator's verbs from playbooks with ``--json``. A new
verb is one row here, its name in the contract, and its options in that module.

Both commands accept every verb (``/usr/sbin/mseg-agent`` and ``/usr/sbin/mseg`` are the same entry point with a
different name). Errors are one line on standard error and a non-zero exit, never a traceback; ``trace`` exits 3
when the traced packet is dropped.

Run by root, the operator's verbs trust nothing the agent user or the caller controls: they run from ``/`` with
a clean environment (the entry point's interpreter is isolated, ``python3 -I``), take the host name, management
peers and bundle public key from root's own configuration in ``/etc/mseg`` (root-owned and writable by nobody
else, checked with ``common.files.read_checked``; never the agent's ``identity.json``), read the agent's state
without following links or blocking on FIFOs, and print it with every non-printable character escaped.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import sys
import threading

from ansible_collections.mseg.fleet.plugins.module_utils.agent.config import DEFAULT_CONFIG, DEFAULT_LOG_FILE, DEFAULT_STATE_DIR, Config
from ansible_collections.mseg.fleet.plugins.module_utils.agent.daemon import CLEAR_OVERRIDE, Agent
from ansible_collections.mseg.fleet.plugins.module_utils.agent.droplog import HEARTBEAT_HOST_RE, DropLog
from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.agent.fetch import controller_url
from ansible_collections.mseg.fleet.plugins.module_utils.agent.log import make_logger
from ansible_collections.mseg.fleet.plugins.module_utils.agent.trace import ROOT_CWD, ROOT_ENV, run_trace
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import printable, read_checked
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft

# What ``mseg mode`` accepts: a local override, or ``clear`` to follow the controllers again.
MODES = ("bypass", "observe", "enforce", "clear")
# ``mseg trace``'s exit status when the traced packet is dropped (0 when it gets through).
TRACE_DROPPED = 3


def counters():
    """Named counters of table inet mseg: [(name, packets, bytes)], or None when nft cannot list them."""
    try:
        return Nft().counters()
    except MsegError:
        return None


def format_status(status, counted):
    """``mseg status`` in words; every value comes from a file the agent user writes, so each line is escaped."""
    return "\n".join(printable(line) for line in _status_lines(status, counted))


def _status_lines(status, counted):
    bundle = status.get("bundle") or {}
    override = status.get("override")
    lines = ["host         %s" % status.get("host"),
             "mode         %s%s" % (status.get("mode") or "none (no bundle yet)",
                                    " (local override %s since %s by %s; %s ends it)"
                                    % (override.get("kind"), override.get("set_at"), override.get("set_by"),
                                       CLEAR_OVERRIDE)
                                    if override else "")]
    if bundle:
        lines += ["serial       %s (created %s, valid until %s)" % (bundle.get("serial"), bundle.get("created_at"),
                                                                    bundle.get("valid_until")),
                  "policy       %s" % bundle.get("policy_digest"),
                  "ruleset      sha256 %s" % bundle.get("ruleset_sha256")]
    else:
        lines.append("serial       none: no bundle accepted yet")
    poll = status.get("last_poll") or {}
    if poll:
        lines.append("last poll    %s %s: %s%s" % (poll.get("at"), poll.get("controller") or "(no controller)",
                                                   poll.get("result"),
                                                   " (%s)" % poll["detail"] if poll.get("detail") else ""))
    applied = status.get("last_apply") or {}
    if applied:
        lines.append("last apply   %s %s (%s): %s" % (applied.get("at"), applied.get("what"), applied.get("why"),
                                                      applied.get("msg")))
    error = status.get("last_error")
    if error:
        lines.append("last error   %s %s: %s" % (error.get("at"), error.get("kind"), error.get("msg")))
    if counted is None:
        lines.append("counters     unavailable (run as root: listing nftables needs CAP_NET_ADMIN)")
    else:
        lines.append("counters     %d" % len(counted))
        for name, packets, size in counted:
            lines.append("  %-28s %12d packets %14d bytes" % (name, packets, size))
    return lines


def _operator():
    """Who runs the CLI, for the log: the login user behind sudo/su when known."""
    try:
        with open("/proc/self/loginuid") as handle:
            uid = int(handle.read().strip())
    except (OSError, ValueError):
        uid = -1
    if 0 <= uid < 4294967295:
        try:
            import pwd
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return "uid %d" % uid
    return os.environ.get("SUDO_USER") or "root"


def _as_agent_user(state_dir, argv):
    """Run a changing command as the owner of the state directory with only CAP_NET_ADMIN (files stay its)."""
    if os.geteuid() != 0 or os.environ.get("MSEG_AS_AGENT"):
        return
    try:
        owner = os.stat(state_dir)
    except OSError:
        return
    if owner.st_uid == 0:
        return
    setpriv = shutil.which("setpriv", path=ROOT_ENV["PATH"]) or "/usr/bin/setpriv"
    env = dict(ROOT_ENV, MSEG_AS_AGENT="1", MSEG_OPERATOR=_operator())
    os.execve(setpriv, [setpriv, "--reuid=%d" % owner.st_uid, "--regid=%d" % owner.st_gid, "--clear-groups",
                        "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
                        "--bounding-set=-all,+net_admin", "--", sys.executable, "-I", os.path.abspath(sys.argv[0])]
              + argv, env)


def _as_root_cleanly():
    """As root, run from ``/`` with ``ROOT_ENV`` only: no variable or directory of the caller's reaches a program
    this verb starts (SUDO_USER is kept for the log's 'who')."""
    if os.geteuid() != 0:
        return
    who = os.environ.get("SUDO_USER")
    os.environ.clear()
    os.environ.update(ROOT_ENV)
    if who:
        os.environ["SUDO_USER"] = who
    os.chdir(ROOT_CWD)


def _load_json(raw, path):
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise AgentError("%s is not valid JSON (%s)" % (path, printable(exc)))


def _cli_agent(args, log):
    """The agent the operator's verbs work with. As root: host, management peers and the bundle public key from
    root's configuration (root-owned, nobody else may write it), never from what the agent user recorded; as the
    agent user (``mode`` and ``rollback`` drop to it): its own ``identity.json``."""
    if os.geteuid() != 0:
        return Agent.from_identity(args.state_dir, log)
    path = args.config or DEFAULT_CONFIG
    raw = read_checked(path)
    if raw is None:
        raise AgentError("%s does not exist: the agent is not configured on this host (run the mseg.fleet.agent "
                         "role)" % path)
    config = Config(_load_json(raw, path), path)
    key_path = config.files["public_key"]
    key = read_checked(key_path)
    if key is None:
        raise AgentError("the bundle public key %s named by %s does not exist (run the mseg.fleet.agent role)"
                         % (key_path, path))
    return Agent(config.host, args.state_dir, key, log, config.peers)


def _read_status(state_dir):
    """The agent's status.json (written by the agent user): no links followed, no FIFO waited on, bounded."""
    path = os.path.join(state_dir, "status.json")
    raw = read_checked(path, root_owned=False)
    if raw is None:
        return None
    status = _load_json(raw, path)
    if not isinstance(status, dict):
        raise AgentError("%s is not a JSON object; remove it (the agent writes it again)" % path)
    return status


def _say(text):
    """The CLI's answer on standard output."""
    sys.stdout.write(text + "\n")


def _say_json(data):
    _say(json.dumps(data, indent=1, sort_keys=True))


# --- the service's verbs (mseg-agent) ----------------------------------------------------------------------------


def _run(args, _argv):
    config = Config.load(args.config)
    log = make_logger(args.log_file or config.log_file)
    agent = Agent.from_config(config, log)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("%s starting for %s: controllers %s, interval %.1fs (+/-%d%%), drop log from %s", contract.AGENT_COMMAND,
             config.host, ", ".join(controller_url(c) for c in config.controllers), config.interval,
             config.jitter * 100, config.droplog)
    if config.droplog != "none":
        DropLog(config.host, log, stop).start()
    agent.run(stop)
    log.info("%s stopping", contract.AGENT_COMMAND)
    return 0


def _droplog(args, _argv):
    """The drop log alone, in the foreground (``DROPLOG_UNIT`` on push-mode hosts, which run no agent): the same
    NFLOG records and heartbeats as the agent's, in ``DROPLOG_RUNTIME_LOG``, for the observe report."""
    if not HEARTBEAT_HOST_RE.match(args.host):
        raise AgentError("--host '%s' is not a host name the drop log can write (letters, digits, '_', '.', '-'; "
                         "the unit passes the inventory name)" % printable(args.host))
    log = make_logger(args.log_file or contract.DROPLOG_RUNTIME_LOG)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("%s droplog starting for %s: NFLOG records only, no agent on this host", contract.AGENT_COMMAND, args.host)
    DropLog(args.host, log, stop).run()
    log.info("%s droplog stopping", contract.AGENT_COMMAND)
    return 0


def _restore(args, _argv):
    config = Config.load(args.config)
    log = make_logger(args.log_file or config.log_file, sys.stderr)
    agent = Agent.from_config(config, log, with_tls=False)
    agent.record_identity()
    with agent.state.locked():
        try:
            if agent.apply_desired("boot restore") is None and agent.state.read_bytes("current.json") is None \
                    and os.path.exists(agent.persisted_copy()):
                raise AgentError("the stored bundle %s is gone, yet the agent has applied one before"
                                 % agent.state.path("current.json"))
        except MsegError as exc:
            # fail closed, never open: the last ruleset the agent applied, else the fail-closed table (exit 1 either
            # way, so the unit shows the failure; the running agent applies the next good bundle it fetches)
            log.error("boot restore failed: %s", exc)
            agent.restore_fallback()
            return 1
    return 0


# --- the operator's verbs (mseg) ---------------------------------------------------------------------------------


def _status(args, _argv):
    status = _read_status(args.state_dir)
    if status is None:
        raise AgentError("%s/status.json does not exist: the agent has not run on this host (systemctl status "
                         "mseg-agent)" % args.state_dir)
    counted = counters()
    if args.json:
        status["counters"] = None if counted is None else [
            {"name": n, "packets": p, "bytes": b} for n, p, b in counted]
        _say_json(status)
    else:
        _say(format_status(status, counted))
    return 0


def _trace(args, _argv):
    result = run_trace(_cli_agent(args, make_logger(None)), args.src, args.dst, args.port)
    if args.json:
        _say_json(result)
    else:
        _say("%s %s -> %s %s: %s (%s) in %s; decided by %s%s" % (
            result["direction"], args.src, args.dst, result["port"], "allowed" if result["allowed"] else "dropped",
            result["result"], result["ruleset"], ", ".join(result["decided_by"]) or "the chain policy",
            "; logged by %s" % ", ".join(result["logged_by"]) if result["logged_by"] else ""))
    return 0 if result["allowed"] else TRACE_DROPPED


def _override_key(override):
    """What an override holds, without when and by whom it was set (setting the same one again changes nothing)."""
    if not override:
        return None
    return {key: value for key, value in override.items() if key not in ("set_at", "set_by")}


def _override(args, argv, change):
    """Run ``change(agent, who) -> (engine result or None, message)`` as the agent user, and answer."""
    _as_agent_user(args.state_dir, argv)
    who = os.environ.get("MSEG_OPERATOR") or _operator()
    log_file = args.log_file or DEFAULT_LOG_FILE
    log = make_logger(log_file if os.path.isdir(os.path.dirname(log_file)) else None)
    agent = _cli_agent(args, log)
    before = agent.state.read_json("override.json")
    result, message = change(agent, who)
    after = agent.state.read_json("override.json")
    if args.json:
        _say_json({"changed": _override_key(before) != _override_key(after) or bool(result and result.get("changed")),
                   "msg": message, "override": after, "mode": agent.effective_mode(agent.meta(), after)})
    else:
        _say(message)
    return 0


def _mode(args, argv):
    def change(agent, who):
        if args.mode == "clear":
            result, message = agent.clear_override(who)
            return result, message + (": %s" % result.get("msg") if result else "")
        if args.mode == "bypass":
            result = agent.bypass(who)
            return result, "mode bypass set locally: %s; %s returns to the controllers' policy" % (
                result.get("msg"), CLEAR_OVERRIDE)
        result = agent.set_mode(args.mode, who)
        return result, "mode %s set locally: %s; %s returns to the controllers' mode" % (
            args.mode, result.get("msg") if result else "no bundle yet", CLEAR_OVERRIDE)
    return _override(args, argv, change)


def _rollback(args, argv):
    def change(agent, who):
        result = agent.rollback(who)
        return result, "rolled back to the previous bundle: %s" % result.get("msg")
    return _override(args, argv, change)


# --- the table of verbs ------------------------------------------------------------------------------------------

Verb = collections.namedtuple("Verb", "name program help handler arguments")
# One argument of a verb: argparse's add_argument(*flags, **options).
Argument = collections.namedtuple("Argument", "flags options")


def _json(what):
    return Argument(("--json",), {"action": "store_true", "help": "print %s as JSON" % what})


VERBS = (
    Verb("run", contract.AGENT_COMMAND, "poll the controllers and apply new bundles (the systemd service)",
         _run, ()),
    Verb("restore", contract.AGENT_COMMAND, "apply the last good bundle (or the local override) once; used at boot",
         _restore, ()),
    Verb("droplog", contract.AGENT_COMMAND, "collect the ruleset's NFLOG records into %s without an agent (the "
         "%s of push-mode hosts)" % (contract.DROPLOG_RUNTIME_LOG, contract.DROPLOG_UNIT), _droplog, (
             Argument(("--host",), {"required": True, "help": "this host's inventory name, for the heartbeats"}),)),
    Verb("status", contract.HOST_CLI, "mode, serial, policy hash, last poll, per-rule counters",
         _status, (_json("the status"),)),
    Verb("mode", contract.HOST_CLI, "set a local mode override (bypass, observe, enforce); clear to follow the "
         "controllers again", _mode, (Argument(("mode",), {"choices": MODES}), _json("the outcome"))),
    Verb("rollback", contract.HOST_CLI, "apply the previous good bundle and hold it until '%s mode clear'"
         % contract.HOST_CLI, _rollback, (_json("the outcome"),)),
    Verb("trace", contract.HOST_CLI, "send one real packet through this host's ruleset in scratch namespaces "
         "(exit status %d when it is dropped)" % TRACE_DROPPED, _trace, (
             Argument(("--src",), {"required": True, "help": "source address (this host's for egress)"}),
             Argument(("--dst",), {"required": True, "help": "destination address (this host's for ingress)"}),
             Argument(("--port",), {"required": True, "help": "tcp/5432, udp/53 or icmp"}),
             _json("the result"))),
)
VERB = {verb.name: verb for verb in VERBS}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (what is wrong and where to look), like every other error."""

    def error(self, message):
        self.exit(2, "%s: %s (see %s --help)\n" % (self.prog, message, self.prog))


def parser(prog):
    """The command line of ``prog``, built from ``VERBS``."""
    root = _Parser(prog=prog, description="mseg.fleet host agent (%s) and operator CLI (%s)"
                   % (contract.AGENT_COMMAND, contract.HOST_CLI))
    root.add_argument("--config", help="agent configuration (default: the systemd credential, else %s)"
                      % DEFAULT_CONFIG)
    root.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="agent state directory (default %(default)s)")
    root.add_argument("--log-file", default=None, help="runtime log (default: from the configuration for run and "
                      "restore, %s for the CLI)" % DEFAULT_LOG_FILE)
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for verb in VERBS:
        command = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        for argument in verb.arguments:
            command.add_argument(*argument.flags, **argument.options)
    return root


def main(argv=None, prog=contract.HOST_CLI):
    """Entry point of ``mseg-agent`` and ``mseg``. Returns the exit status; errors are one line, no traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(prog).parse_args(argv)
    try:
        if VERB[args.command].program == contract.HOST_CLI:
            _as_root_cleanly()
        return VERB[args.command].handler(args, argv)
    except MsegError as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return 1
    except OSError as exc:
        where = getattr(exc, "filename", None) or args.command
        sys.stderr.write("%s: %s: %s\n" % (prog, where, exc.strerror or exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
