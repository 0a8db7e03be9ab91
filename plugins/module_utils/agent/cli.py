# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one host CLI: ``mseg-agent`` (the service: ``run``, ``restore``) and ``mseg`` (the operator: ``status``,
``mode``, ``rollback``, ``trace``). Names and verbs come from the wire contract (``common.contract``); errors are
one line on standard error and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading

from ansible_collections.mseg.fleet.plugins.module_utils.agent.config import DEFAULT_CONFIG, DEFAULT_LOG_FILE, DEFAULT_STATE_DIR, Config
from ansible_collections.mseg.fleet.plugins.module_utils.agent.daemon import Agent
from ansible_collections.mseg.fleet.plugins.module_utils.agent.droplog import DropLog
from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.agent.fetch import controller_url
from ansible_collections.mseg.fleet.plugins.module_utils.agent.log import make_logger
from ansible_collections.mseg.fleet.plugins.module_utils.agent.state import State
from ansible_collections.mseg.fleet.plugins.module_utils.agent.trace import run_trace
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft


def counters():
    """Named counters of table inet mseg: [(name, packets, bytes)], or None when nft cannot list them."""
    try:
        return Nft().counters()
    except MsegError:
        return None


def format_status(status, counted):
    bundle = status.get("bundle") or {}
    override = status.get("override")
    lines = ["host         %s" % status.get("host"),
             "mode         %s%s" % (status.get("mode") or "none (no bundle yet)",
                                    " (local override %s since %s by %s; 'mseg mode clear' ends it)"
                                    % (override.get("kind"), override.get("set_at"), override.get("set_by"))
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
    return "\n".join(lines)


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
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    env = dict(os.environ, MSEG_AS_AGENT="1", MSEG_OPERATOR=_operator())
    os.execve(setpriv, [setpriv, "--reuid=%d" % owner.st_uid, "--regid=%d" % owner.st_gid, "--clear-groups",
                        "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
                        "--bounding-set=-all,+net_admin", "--", sys.executable, os.path.abspath(sys.argv[0])] + argv,
              env)


def _say(text):
    """The CLI's answer on standard output."""
    sys.stdout.write(text + "\n")


def _parser(prog):
    parser = argparse.ArgumentParser(prog=prog, description="mseg.fleet host agent and emergency CLI")
    parser.add_argument("--config", help="agent configuration (default: the systemd credential, else %s)"
                        % DEFAULT_CONFIG)
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="agent state directory (default %(default)s)")
    parser.add_argument("--log-file", default=None, help="runtime log (default: from the configuration for run and "
                        "restore, %s for the CLI)" % DEFAULT_LOG_FILE)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("run", help="poll the controllers and apply new bundles (the systemd service)")
    sub.add_parser("restore", help="apply the last good bundle (or the local override) once; used at boot")
    status = sub.add_parser("status", help="mode, serial, policy hash, last poll, per-rule counters")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    mode = sub.add_parser("mode", help="set a local mode override (bypass, observe, enforce); clear to follow the "
                                       "controllers again")
    mode.add_argument("mode", choices=("bypass", "observe", "enforce", "clear"))
    sub.add_parser("rollback", help="apply the previous good bundle and hold it until 'mode clear'")
    trace = sub.add_parser("trace", help="send one real packet through this host's ruleset in scratch namespaces")
    trace.add_argument("--src", required=True, help="source address (this host's for egress)")
    trace.add_argument("--dst", required=True, help="destination address (this host's for ingress)")
    trace.add_argument("--port", required=True, help="tcp/5432, udp/53 or icmp")
    trace.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv=None, prog=contract.HOST_CLI):
    """Entry point of ``mseg-agent`` and ``mseg``. Returns the exit status; errors are one line, no traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    try:
        if args.command in contract.AGENT_COMMANDS:
            return _daemon(args)
        return _cli(args, argv)
    except MsegError as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _daemon(args):
    config = Config.load(args.config)
    log = make_logger(args.log_file or config.log_file, sys.stderr if args.command == "restore" else None)
    if args.command == "restore":
        agent = Agent.from_config(config, log, with_tls=False)
        agent.record_identity()
        with agent.state.locked():
            try:
                agent.apply_desired("boot restore")
            except MsegError as exc:
                log.error("boot restore failed: %s; the table stays as it is", exc)
                raise
        return 0
    agent = Agent.from_config(config, log)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("mseg-agent starting for %s: controllers %s, interval %.1fs (+/-%d%%), drop log from %s",
             config.host, ", ".join(controller_url(c) for c in config.controllers), config.interval,
             config.jitter * 100, config.droplog)
    if config.droplog != "none":
        DropLog(config.droplog, log, stop).start()
    agent.run(stop)
    log.info("mseg-agent stopping")
    return 0


def _cli(args, argv):
    if args.command == "status":
        status = State(args.state_dir).read_json("status.json")
        if status is None:
            raise AgentError("%s/status.json does not exist: the agent has not run on this host (systemctl status "
                             "mseg-agent)" % args.state_dir)
        counted = counters()
        if args.json:
            status["counters"] = None if counted is None else [
                {"name": n, "packets": p, "bytes": b} for n, p, b in counted]
            _say(json.dumps(status, indent=1, sort_keys=True))
        else:
            _say(format_status(status, counted))
        return 0
    if args.command == "trace":
        result = run_trace(Agent.from_identity(args.state_dir, make_logger(None)), args.src, args.dst, args.port)
        if args.json:
            _say(json.dumps(result, indent=1, sort_keys=True))
        else:
            _say("%s %s -> %s %s: %s (%s) in %s; decided by %s%s" % (
                result["direction"], args.src, args.dst, result["port"], "allowed" if result["allowed"] else "dropped",
                result["result"], result["ruleset"], ", ".join(result["decided_by"]) or "the chain policy",
                "; logged by %s" % ", ".join(result["logged_by"]) if result["logged_by"] else ""))
        return 0 if result["allowed"] else 3
    _as_agent_user(args.state_dir, argv)
    who = os.environ.get("MSEG_OPERATOR") or _operator()
    log_file = args.log_file or DEFAULT_LOG_FILE
    log = make_logger(log_file if os.path.isdir(os.path.dirname(log_file)) else None)
    agent = Agent.from_identity(args.state_dir, log)
    if args.command == "rollback":
        result = agent.rollback(who)
        _say("rolled back to the previous bundle: %s" % result.get("msg"))
    elif args.mode == "bypass":
        result = agent.bypass(who)
        _say("mode bypass set locally: %s; 'mseg mode clear' returns to the controllers' policy" % result.get("msg"))
    elif args.mode in ("observe", "enforce"):
        result = agent.set_mode(args.mode, who)
        _say("mode %s set locally: %s; 'mseg mode clear' returns to the controllers' mode"
             % (args.mode, result.get("msg") if result else "no bundle yet"))
    else:
        result, message = agent.clear_override(who)
        _say(message + (": %s" % result.get("msg") if result else ""))
    return 0
