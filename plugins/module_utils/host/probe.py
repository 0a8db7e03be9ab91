# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reachability probes with real packets: a listener that identifies itself, and a prober.

Plain Python (no Ansible imports), shipped to the hosts (Python 3.8+).  A listener answers on each
requested port with ``MSEG-PROBE <host> <proto>/<port>``: on TCP right after the handshake, on UDP in reply to a
datagram (echoing its nonce).  A probe reports a port ``open`` only when the handshake or the reply arrived, and
names the host that answered, so a packet that reached the wrong host is never counted as reachable.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import select
import signal
import socket
import subprocess
import time
import uuid

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import parse_single_port

BANNER = b"MSEG-PROBE"
PIDFILE = "/run/mseg-probe-listener.pid"

# Outcomes of one probe; only "open" means the packet got through and the intended host answered.
OPEN = "open"            # handshake completed / reply received (banner names the responder, if ours)
REFUSED = "refused"      # the destination answered with a TCP reset or ICMP port unreachable
TIMEOUT = "timeout"      # nothing came back within the timeout: the packet (or its answer) was dropped; also
#                          a packet this host's own ruleset dropped on the way out (the kernel says EPERM at once)
UNREACHABLE = "unreachable"  # no route, or the neighbour did not answer ARP / ND


class ProbeError(MsegError):
    """Bad input or an environment problem; the message says what and how to fix it."""


def parse_port(spec):
    """``'tcp/8080'`` -> ``('tcp', 8080)``; ``'icmp'`` -> ``('icmp', None)``."""
    found, reason = parse_single_port(spec)
    if found is None or found.first is None and found.proto != "icmp":
        raise ProbeError("invalid port %r: use tcp/<1-65535>, udp/<1-65535> or icmp" % (spec,))
    return found.proto, found.first


def _family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _classify(exc):
    if isinstance(exc, socket.timeout):
        return TIMEOUT
    code = getattr(exc, "errno", None)
    if code == errno.ECONNREFUSED:
        return REFUSED
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return UNREACHABLE
    if code in (errno.ETIMEDOUT, errno.EPERM):
        # EPERM: netfilter on this host dropped the packet on its way out (a UDP send fails at once); it is as
        # dropped as a packet lost on the way, not a fault of the probe
        return TIMEOUT
    raise exc


def _responder(data):
    """Host name in a listener's answer, or None if the answer is not ours."""
    parts = data.split()
    if len(parts) >= 3 and parts[0] == BANNER:
        return parts[1].decode("ascii", "replace")
    return None


def probe_tcp(address, port, timeout):
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect((address, port))
        except (socket.error, socket.timeout) as exc:
            return _classify(exc), None
        # Connected: the packet got through.  A listener of ours names itself; another service (sshd)
        # may send its own banner or nothing.
        sock.settimeout(min(timeout, 0.5))
        try:
            data = sock.recv(256)
        except (socket.error, socket.timeout):
            data = b""
        return OPEN, _responder(data)
    finally:
        sock.close()


def probe_udp(address, port, timeout):
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    nonce = uuid.uuid4().hex.encode()
    deadline = time.time() + timeout
    try:
        try:
            sock.connect((address, port))
            sock.send(BANNER + b" " + nonce)
        except socket.error as exc:
            return _classify(exc), None
        while True:
            left = deadline - time.time()
            if left <= 0:
                return TIMEOUT, None
            sock.settimeout(left)
            try:
                data = sock.recv(512)
            except (socket.error, socket.timeout) as exc:
                return _classify(exc), None
            if data.split()[-1:] == [nonce]:
                return OPEN, _responder(data)
    finally:
        sock.close()


def probe_icmp(address, timeout):
    cmd = ["ping", "-n", "-q", "-c", "1", "-W", str(max(1, int(round(timeout)))), address]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 5,
                              check=False)
    except OSError:
        raise ProbeError("icmp probes need the ping command (Debian package iputils-ping)")
    except subprocess.TimeoutExpired:
        return TIMEOUT, None
    return (OPEN if proc.returncode == 0 else TIMEOUT), None


def probe(address, spec, timeout=1.0):
    """Probe one destination; returns a result dict."""
    proto, port = parse_port(spec)
    started = time.time()
    if proto == "tcp":
        outcome, responder = probe_tcp(address, port, timeout)
    elif proto == "udp":
        outcome, responder = probe_udp(address, port, timeout)
    else:
        outcome, responder = probe_icmp(address, timeout)
    return {"address": address, "port": spec, "result": outcome, "reachable": outcome == OPEN,
            "responder": responder, "elapsed_ms": int((time.time() - started) * 1000)}


# ---------------------------------------------------------------- the listener

def bind_listeners(specs):
    """Bind dual-stack sockets for every ``tcp/N`` / ``udp/N``; ports already taken are returned as busy."""
    socks, busy = [], []
    for spec in specs:
        proto, port = parse_port(spec)
        if proto == "icmp":
            continue  # the kernel answers echo requests itself
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(("::", port))
        except socket.error as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                busy.append(spec)
                continue
            raise ProbeError("cannot listen on %s: %s" % (spec, exc))
        if proto == "tcp":
            sock.listen(64)
        sock.setblocking(False)
        socks.append((spec, proto, sock))
    return socks, busy


def serve(socks, hostname, until):
    """Answer on every socket until the time ``until`` (or SIGTERM)."""
    by_fd = dict((s.fileno(), (spec, proto, s)) for spec, proto, s in socks)
    while True:
        left = until - time.time()
        if left <= 0:
            return
        readable = select.select(list(by_fd), [], [], min(left, 1.0))[0]
        for fd in readable:
            spec, proto, sock = by_fd[fd]
            answer = BANNER + (" %s %s" % (hostname, spec)).encode()
            try:
                if proto == "tcp":
                    conn, _peer = sock.accept()
                    try:
                        conn.settimeout(1.0)
                        conn.sendall(answer + b"\n")
                    finally:
                        conn.close()
                else:
                    data, peer = sock.recvfrom(512)
                    nonce = data.split()[-1:] if data.startswith(BANNER) else []
                    if nonce:
                        sock.sendto(answer + b" " + nonce[0], peer)
            except socket.error:
                continue


def _start_time(pid):
    """Start time of a live process (identifies it across PID reuse); None if gone or a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (IOError, OSError):
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def running_listener(pidfile=PIDFILE):
    """PID of the listener recorded in ``pidfile`` if that very process still runs, else None."""
    try:
        with open(pidfile) as handle:
            pid, start = handle.read().split()
        pid = int(pid)
    except (IOError, OSError, ValueError):
        return None
    return pid if _start_time(pid) == start else None


def stop_listener(pidfile=PIDFILE, timeout=5.0):
    """Stop the recorded listener; True if one was running."""
    pid = running_listener(pidfile)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and running_listener(pidfile) == pid:
            time.sleep(0.05)
        if running_listener(pidfile) == pid:
            os.kill(pid, signal.SIGKILL)
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    return pid is not None


def start_listener(specs, duration, hostname=None, pidfile=PIDFILE):
    """Start a detached listener on ``specs`` for ``duration`` seconds; returns (pid, listening, busy).

    Any listener started earlier is stopped first.  The sockets are bound before this returns, so a
    probe sent right afterwards finds them.
    """
    stop_listener(pidfile)
    hostname = hostname or socket.gethostname()
    socks, busy = bind_listeners(specs)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child: new session, then fork again so the listener is not our child
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            me = os.getpid()
            with open(pidfile + ".tmp", "w") as handle:
                handle.write("%d %s\n" % (me, _start_time(me)))
            os.rename(pidfile + ".tmp", pidfile)
            os.write(ready_w, ("%d\n" % me).encode())
            os.close(ready_w)
            serve(socks, hostname, time.time() + duration)
        finally:
            os._exit(0)
    os.close(ready_w)
    for _spec, _proto, sock in socks:
        sock.close()
    os.waitpid(pid, 0)
    with os.fdopen(ready_r) as ready:
        line = ready.read().strip()
    if not line:
        raise ProbeError("the probe listener did not start (pidfile %s)" % pidfile)
    return int(line), sorted(spec for spec, _p, _s in socks), sorted(busy)
