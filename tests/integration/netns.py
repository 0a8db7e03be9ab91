"""Network-namespace fleets for integration tests (root only).

A ``Fleet`` is a set of network namespaces joined by one bridge, each with an IPv4 and an IPv6
address, so that tests can load real nftables rulesets and send real packets between "hosts"::

    from netns import Fleet, CONNECTED, TIMEOUT

    with Fleet(["a", "b"]) as f:
        f.run("b", ["nft", "-f", "-"], input=RULESET)      # runs inside namespace b
        assert f.tcp_connect("a", "b", 8080, timeout=1.0)   # a listener on b:8080 answers
        assert f.probe("a", "b", 22, timeout=0.5) == TIMEOUT
        assert f.probe("a", "b", 53, proto="udp", family=6) == CONNECTED

Topology: a hidden hub namespace holds the bridge ``br0``; every host namespace gets ``eth0``, one
end of a veth pair whose other end is a bridge port in the hub. Nothing is created in the
caller's namespace and there is no default route, so no test packet can leave the namespaces
made here. Host *i* (0-based, in the order given) has ``10.77.0.(i+1)/24`` and
``fd00:77::(i+1)/64`` (``Fleet.addr(name)`` / ``Fleet.addr6(name)``).

Namespace names are ``mst<pid>x<random>-<name>``: unique per run, so parallel test runs never
collide. Cleanup always runs: on leaving the ``with`` block (also after an exception), at
interpreter exit, and ``cleanup_stale()`` removes namespaces left by runs whose process is gone
(e.g. after ``kill -9``).

The API (``Fleet``, ``run``, ``popen``, ``exec_prefix``, ``addr``, ``addr6``, ``listen``,
``probe``, ``tcp_connect``, ``udp_connect``, ``available``, ``cleanup_stale``) is kept stable;
tests of several areas depend on it.
"""

import atexit
import os
import re
import secrets
import subprocess
import sys
import time

CONNECTED = "connected"
REFUSED = "refused"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"

_PREFIX = "mst"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")
_STALE_RE = re.compile(r"^" + _PREFIX + r"(\d+)x[0-9a-f]+-")

# Runs inside a namespace: bind (dual stack), print "ready", then answer every TCP connection
# with "ok" or echo every UDP datagram, printing one "peer <address>" line for each.
_LISTENER = r"""
import socket, sys
proto, port = sys.argv[1], int(sys.argv[2])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
if proto == "tcp":
    s.listen(64)
print("ready", flush=True)
while True:
    if proto == "tcp":
        c, peer = s.accept()
        try:
            c.sendall(b"ok")
        except OSError:
            pass
        c.close()
    else:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
    print("peer", peer[0].replace("::ffff:", ""), flush=True)
"""

# Runs inside a namespace: one connection attempt, prints connected/refused/timeout/unreachable.
_CLIENT = r"""
import errno, socket, sys
proto, family, host, port, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
fam = socket.AF_INET if family == 4 else socket.AF_INET6
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(fam, kind)
s.settimeout(timeout)
try:
    s.connect((host, port))
    if proto == "udp":
        s.send(b"ping")
        s.recv(2048)
    print("connected")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as e:
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        print("unreachable")
    else:
        print("error", e)
"""


class NetnsError(RuntimeError):
    """A namespace operation failed; the message carries the command and its stderr."""


def available():
    """Return ``(True, "")`` when namespaces can be made here, else ``(False, reason)``.

    Tests call it to skip with a clear reason instead of failing on an unprivileged machine.
    """
    if os.geteuid() != 0:
        return False, "network namespace tests need root"
    for tool in ("ip", "nft"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]):
            return False, "%s is not installed" % tool
    return True, ""


def bench_namespaces():
    """The named namespaces the benchmarks' packet-path fleet makes (``mspp`` prefix): a smoke run leaves none."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split(" ")[0] for line in out.splitlines() if line.startswith("mspp")}


def _ip(args, check=True):
    proc = subprocess.run(["ip"] + args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError("ip %s: %s" % (" ".join(args), proc.stderr.strip()))
    return proc


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale():
    """Delete namespaces left behind by earlier runs whose process no longer exists."""
    removed = []
    for name in _ip(["netns", "list"], check=False).stdout.split("\n"):
        name = name.split(" ")[0].strip()
        match = _STALE_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip(["netns", "delete", name], check=False)
            removed.append(name)
    return removed


class Listener:
    """A TCP or UDP server inside a namespace; ``peers`` lists who reached it (after ``stop``)."""

    def __init__(self, fleet, host, port, proto):
        self.host, self.port, self.proto = host, port, proto
        self.peers = []
        self._proc = fleet.popen(host, [sys.executable, "-c", _LISTENER, proto, str(port)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self._proc.stdout.readline().decode().strip()
        if line != "ready":
            self._proc.kill()
            err = self._proc.communicate()[1].decode().strip()
            raise NetnsError("listener %s/%d on %s did not start: %s" % (proto, port, host, err))

    def stop(self):
        if self._proc.poll() is None:
            self._proc.terminate()
        out = self._proc.communicate()[0]
        self.peers = [line.split(" ", 1)[1] for line in out.decode().splitlines() if line.startswith("peer ")]
        return self.peers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Fleet:
    """Network namespaces joined by a bridge; use as a context manager.

    ``names``: short host names (``[a-z0-9_-]``, at most 31 characters), in address order.
    """

    def __init__(self, names, ipv6=True):
        names = list(names)
        if not names or len(set(names)) != len(names) or len(names) > 250:
            raise ValueError("Fleet needs 1-250 distinct host names, got %r" % (names,))
        for name in names:
            if not _NAME_RE.match(name):
                raise ValueError("bad host name %r: use [a-z0-9_-], at most 31 characters" % name)
        self.names = names
        self.ipv6 = ipv6
        self.run_id = "%s%dx%s" % (_PREFIX, os.getpid(), secrets.token_hex(3))
        self.hub = self.run_id + "-hub"
        self._made = []
        self._listeners = []

    # -------------------------------------------------------------- naming

    def ns(self, name):
        """The real namespace name of host ``name`` (for ``ip netns exec``)."""
        if name not in self.names:
            raise KeyError("no host %r in this fleet (hosts: %s)" % (name, ", ".join(self.names)))
        return "%s-%s" % (self.run_id, name)

    def addr(self, name):
        """IPv4 address of host ``name``."""
        return "10.77.0.%d" % (self.names.index(name) + 1)

    def addr6(self, name):
        """IPv6 address of host ``name``."""
        self.ns(name)
        return "fd00:77::%x" % (self.names.index(name) + 1)

    def exec_prefix(self, name):
        """The argv prefix that runs a command inside host ``name``."""
        return ["ip", "netns", "exec", self.ns(name)]

    # -------------------------------------------------------------- life cycle

    def __enter__(self):
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _build(self):
        cleanup_stale()
        _ip(["netns", "add", self.hub])
        self._made.append(self.hub)
        _ip(["-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _ip(["-n", self.hub, "link", "set", "lo", "up"])
        _ip(["-n", self.hub, "link", "set", "br0", "up"])
        for index, name in enumerate(self.names):
            ns = self.ns(name)
            _ip(["netns", "add", ns])
            self._made.append(ns)
            port = "p%d" % index
            _ip(["-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _ip(["-n", self.hub, "link", "set", port, "master", "br0", "up"])
            _ip(["-n", ns, "link", "set", "lo", "up"])
            _ip(["-n", ns, "addr", "add", self.addr(name) + "/24", "dev", "eth0"])
            if self.ipv6:
                _ip(["-n", ns, "addr", "add", self.addr6(name) + "/64", "dev", "eth0", "nodad"])
            _ip(["-n", ns, "link", "set", "eth0", "up"])
        self._wait_up()

    def _wait_up(self):
        deadline = time.monotonic() + 5
        for name in self.names:
            while "LOWER_UP" not in _ip(["-n", self.ns(name), "link", "show", "eth0"]).stdout:
                if time.monotonic() > deadline:
                    raise NetnsError("eth0 of %s did not come up" % name)
                time.sleep(0.02)

    def close(self):
        """Stop listeners and delete every namespace of this fleet (idempotent)."""
        for listener in self._listeners:
            try:
                listener.stop()
            except OSError:
                pass
        self._listeners = []
        for ns in reversed(self._made):
            _ip(["netns", "delete", ns], check=False)
        self._made = []
        atexit.unregister(self.close)

    # -------------------------------------------------------------- commands

    def run(self, name, cmd, input=None, check=True, timeout=60, env=None):
        """Run ``cmd`` (argv list, or a string for ``sh -c``) inside host ``name``.

        Returns ``subprocess.CompletedProcess`` with text ``stdout``/``stderr``. With ``check``
        (the default) a non-zero exit raises ``NetnsError`` carrying stderr.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(self.exec_prefix(name) + argv, input=input, capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise NetnsError("%s on %s exited %d: %s" % (" ".join(argv), name, proc.returncode, detail))
        return proc

    def popen(self, name, argv, **kwargs):
        """``subprocess.Popen`` of ``argv`` inside host ``name`` (the caller owns the process)."""
        return subprocess.Popen(self.exec_prefix(name) + list(argv), **kwargs)

    # -------------------------------------------------------------- traffic

    def listen(self, name, port, proto="tcp"):
        """Start a listener on ``name`` (IPv4 and IPv6); a context manager, stopped on close."""
        if proto not in ("tcp", "udp"):
            raise ValueError("proto must be tcp or udp")
        listener = Listener(self, name, port, proto)
        self._listeners.append(listener)
        return listener

    def probe(self, src, dst, port, proto="tcp", family=4, timeout=1.0, listen=True):
        """One connection attempt from ``src`` to ``dst``; returns CONNECTED, REFUSED, TIMEOUT or UNREACHABLE.

        With ``listen`` (the default) a listener runs on ``dst`` for the attempt; with
        ``listen=False`` the port is probed as it is (e.g. to see a reject, or a real server).
        """
        if proto not in ("tcp", "udp") or family not in (4, 6):
            raise ValueError("proto must be tcp or udp and family 4 or 6")
        target = self.addr(dst) if family == 4 else self.addr6(dst)
        listener = self.listen(dst, port, proto) if listen else None
        try:
            proc = self.run(src, [sys.executable, "-c", _CLIENT, proto, str(family), target, str(port),
                                  str(timeout)], timeout=timeout + 30)
        finally:
            if listener is not None:
                listener.stop()
                self._listeners.remove(listener)
        result = proc.stdout.strip()
        if result not in (CONNECTED, REFUSED, TIMEOUT, UNREACHABLE):
            raise NetnsError("probe %s -> %s %s/%d: %s %s" % (src, dst, proto, port, result, proc.stderr.strip()))
        return result

    def tcp_connect(self, src, dst, port, timeout=1.0, family=4, listen=True):
        """True when a TCP connection from ``src`` to ``dst:port`` is established."""
        return self.probe(src, dst, port, "tcp", family, timeout, listen) == CONNECTED

    def udp_connect(self, src, dst, port, timeout=1.0, family=4, listen=True):
        """True when a UDP datagram from ``src`` to ``dst:port`` is answered."""
        return self.probe(src, dst, port, "udp", family, timeout, listen) == CONNECTED
