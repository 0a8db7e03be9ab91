# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``mseg trace``: one real packet through this host's own ruleset, in scratch network namespaces.

Runs on the agent host, as root (creating network namespaces needs CAP_SYS_ADMIN). The two ends of the traced flow
are programs of their own, ``trace_listener.py`` and ``trace_sender.py`` beside this file, run by path with the
host's Python inside the scratch namespaces; the agent role installs them with the ``agent`` package.

Everything it starts runs as root, so nothing of the caller's may steer it: each program runs from ``/`` with the
clean environment ``ROOT_ENV``, and the two Python programs in an isolated interpreter (``-I``: no current
directory or script directory on the import path, no ``PYTHON*`` variables, no user site; ``-S``: no site
packages, they need the standard library only). A ``socket.py`` planted where the operator stands is never imported.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import build_transaction
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import parse_single_port
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft

_HERE = os.path.dirname(os.path.abspath(__file__))
LISTENER = os.path.join(_HERE, "trace_listener.py")
SENDER = os.path.join(_HERE, "trace_sender.py")
# The environment and directory of every program trace starts as root: nothing inherited from the caller.
ROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
ROOT_CWD = "/"


def python_program(script, *args):
    """The command line that runs one of trace's own programs in an isolated interpreter (standard library only)."""
    return [sys.executable, "-I", "-S", script] + [str(arg) for arg in args]


def _local_addresses():
    proc = subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True, check=False, cwd=ROOT_CWD,
                          env=dict(ROOT_ENV))
    try:
        return {item["local"] for link in json.loads(proc.stdout or "[]") for item in link.get("addr_info", [])
                if item.get("local")}
    except (ValueError, TypeError, KeyError):
        return set()


def _log_counters(content):
    """Counters of log rules (they count and continue; they never decide)."""
    names = set()
    for line in content.splitlines():
        if contract.log_tag("LOG") in line and 'counter name "' in line:
            names.add(line.split('counter name "', 1)[1].split('"', 1)[0])
    return names


class Trace:
    """Evaluate the host's own ruleset in the kernel: two scratch network namespaces joined by a veth pair, the
    ruleset loaded into the one that plays this host, one real connection attempt, and the named counters that
    moved. No second implementation of the policy: the kernel decides, with exactly the ruleset the agent runs.
    Needs root (creating network namespaces needs CAP_SYS_ADMIN); touches nothing of the host's own namespace."""

    def __init__(self, content, peers=(), timeout=1.0, runner=subprocess.run, popen=subprocess.Popen):
        self.content = content
        self.peers = list(peers)
        self.timeout = timeout
        self._run = runner
        self.popen = popen
        tag = "%x" % (os.getpid() & 0xFFFFFF)
        self.ns = {"host": "mseg-trace-%s-h" % tag, "peer": "mseg-trace-%s-p" % tag}
        self.links = ("mtr%sh" % tag, "mtr%sp" % tag)

    def runner(self, argv, check=False, **options):
        """Run ``argv`` as ``subprocess.run`` would, from ``/`` with ``ROOT_ENV`` whatever the caller's."""
        return self._run(argv, cwd=ROOT_CWD, env=dict(ROOT_ENV), check=check, **options)

    def _ip(self, *args):
        proc = self.runner(["ip"] + list(args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AgentError("trace: 'ip %s' failed (%s); mseg trace needs root to create scratch network "
                             "namespaces" % (" ".join(args), proc.stderr.strip()))

    def _in(self, which, argv, text=None):
        return self.runner(["ip", "netns", "exec", self.ns[which]] + argv, input=text, capture_output=True,
                           text=True, check=False)

    def _counters(self):
        try:
            listed = Nft(runner=self.runner, netns=self.ns["host"]).counters()
        except MsegError:
            return {}
        return {name: packets for name, packets, _bytes in listed or ()}

    def _settled(self, quiet=0.3, limit=3.0):
        """The counters once nothing has moved for ``quiet`` seconds (links coming up send a few packets)."""
        deadline = time.monotonic() + limit
        last = self._counters()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self._counters()
            if now == last:
                break
            last = now
        return last

    def run(self, local, peer, direction, proto, port):
        family = ipaddress.ip_address(local).version
        if ipaddress.ip_address(peer).version != family:
            raise AgentError("trace: %s and %s are of different address families" % (local, peer))
        bits = 32 if family == 4 else 128
        try:
            for name in self.ns.values():
                self._ip("netns", "add", name)
                # no IPv6 chatter (router solicitations, and for an IPv4 trace no IPv6 at all) to count by mistake
                quiet = {"net.ipv6.conf.default.router_solicitations": "0",
                         "net.ipv6.conf.default.disable_ipv6": "1" if family == 4 else "0"}
                for key, value in quiet.items():
                    self.runner(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "%s=%s" % (key, value)],
                                capture_output=True, check=False)
            self._ip("link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])
            ends = (("host", self.links[0], local, peer), ("peer", self.links[1], peer, local))
            for which, link, mine, other in ends:
                self._ip("link", "set", link, "netns", self.ns[which])
                self._ip("-n", self.ns[which], "link", "set", "lo", "up")
                self._ip("-n", self.ns[which], "address", "add", "%s/%d" % (mine, bits), "dev", link,
                         *(["nodad"] if family == 6 else []))
                self._ip("-n", self.ns[which], "link", "set", link, "up")
                self._ip("-n", self.ns[which], "route", "add", "%s/%d" % (other, bits), "dev", link)
            # the checked load, as everywhere else: nft reads the text in a sandbox of its own, the JSON form is
            # judged against the wire contract, and only that JSON is loaded into the namespace (never the text)
            try:
                Nft(runner=self.runner, netns=self.ns["host"]).load(build_transaction(self.content, self.peers))
            except MsegError as exc:
                raise AgentError("trace: the host's ruleset did not load in the scratch namespace: %s" % exc)
            receiver, sender = ("host", "peer") if direction == "ingress" else ("peer", "host")
            target = local if direction == "ingress" else peer
            before = self._settled()
            listener = None
            if proto != "icmp":
                listener = self.popen(["ip", "netns", "exec", self.ns[receiver]]
                                      + python_program(LISTENER, proto, family, port), cwd=ROOT_CWD,
                                      env=dict(ROOT_ENV), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                if listener.stdout.readline().strip() != "ready":
                    raise AgentError("trace: the scratch listener on %s/%s did not start" % (proto, port))
            try:
                sent = self._in(sender, python_program(SENDER, proto, family, target, port or 0, self.timeout))
            finally:
                if listener is not None:
                    listener.kill()
                    listener.wait()
            after = self._counters()
        finally:
            for name in self.ns.values():
                self.runner(["ip", "netns", "delete", name], capture_output=True, check=False)
        # replies cross the other chain; they decide nothing
        moved = sorted(name for name, packets in after.items() if packets > before.get(name, 0)
                       and contract.counter_direction(name) in (direction, None))
        logged = _log_counters(self.content)
        deciding = [name for name in moved if name not in logged]
        result = sent.stdout.strip() or "timeout"
        return {"direction": direction, "local": local, "peer": peer,
                "port": proto if proto == "icmp" else "%s/%d" % (proto, port),
                "result": result, "allowed": result in ("open", "refused"),
                "decided_by": deciding, "logged_by": sorted(set(moved) & logged)}


def run_trace(agent, src, dst, port_text):
    """``mseg trace``: which of src/dst is this host decides the direction; returns the Trace result."""
    spec, reason = parse_single_port(port_text)
    if spec is None:
        raise AgentError("--port %r %s" % (port_text, reason))
    local = _local_addresses()
    for value, what in ((src, "--src"), (dst, "--dst")):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise AgentError("%s %r is not an IP address" % (what, value))
    if dst in local and src not in local:
        direction, mine, other = "ingress", dst, src
    elif src in local and dst not in local:
        direction, mine, other = "egress", src, dst
    else:
        raise AgentError("one of --src and --dst must be an address of this host (it has %s), the other a peer: "
                         "the host's bundle decides only its own ingress and egress" % ", ".join(sorted(local)))
    content, what = agent.desired()
    if content is None:
        raise AgentError("no bundle to trace: %s" % what)
    result = Trace(content, agent.peers).run(mine, other, direction, spec.proto, spec.first)
    result["ruleset"] = what
    return result
