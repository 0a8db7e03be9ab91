# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side of the nftables contract: apply one rendered ruleset to table ``inet mseg``.

Plain Python (no Ansible imports): the ``nft_apply`` module wraps it and the per-host agent
reuses it. Guarantees (DESIGN section 5):

* scope: content that touches anything but table ``inet mseg`` is refused before ``nft`` runs;
* atomic: ``nft -c -f`` validates, one ``nft -f`` transaction replaces the table;
* idempotent: the sha256 of the desired transaction and the live table listed without counters
  (``nft -s``) are recorded; a run is unchanged when both still match. The kernel's ruleset
  generation id (netlink ``NFT_MSG_GETGEN``) is recorded too, so an unchanged run on an unchanged
  kernel ruleset does not even need to list the table;
* persistent: the applied transaction lives in ``<state_dir>/ruleset.nft`` (0600, first line
  carries its own sha256) and ``mseg-restore.service`` reloads it at boot. A file that fails its
  checksum or ``nft -c`` is not loaded: a fail-closed table is loaded instead (see ``RESTORE_SCRIPT``);
* serialised: one ``flock`` per state directory;
* commit-confirmed: ``arm`` forks a detached worker that applies, then restores the previous
  table unless ``confirm`` renames its ``armed`` marker in time.

State directory layout: ``ruleset.nft`` (persisted transaction), ``ruleset.prev.nft`` (the table
that was live before the last apply, loadable), ``live.nft`` (recorded listing), ``state.json``,
``restore.sh`` (boot restore), ``lock``, ``txn/<token>/`` (commit-confirmed transactions).
"""

from __future__ import absolute_import, division, print_function

import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

__metaclass__ = type

TABLE = "inet mseg"
PREAMBLE = "table inet mseg {}\ndelete table inet mseg\n"
UNIT_NAME = "mseg-restore.service"
DEFAULT_STATE_DIR = "/etc/mseg"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
HASH_HEADER = "# mseg-sha256: "
GO_WAIT = 120
GO_GRACE = 0.5  # after the start signal, time for its exit status to reach the controller before a cut
RESULT_WAIT = 120

_OBJECTS = ("chain", "set", "map", "element", "rule", "counter", "quota", "limit", "flowtable",
            "ct", "secmark", "synproxy")
_VERBS = ("add", "create", "delete", "destroy", "flush", "insert", "replace", "reset")


class ApplyError(Exception):
    """A failure with one message that says what, where and how to fix it."""


# --------------------------------------------------------------------------- scope check


_LEXEME = re.compile(r'"[^"\n]*"?|#[^\n]*')
_TOP = re.compile(r"[{};\n]")
_INNER = re.compile(r"[{}]")


def _blank(match):
    """Same length, no meaning: string contents become ``_``, comments spaces (positions stay valid)."""
    token = match.group(0)
    if token[0] == '"':
        return '"' + "_" * max(0, len(token) - 2) + ('"' if len(token) > 1 else "")
    return " " * len(token)


def _statements(content):
    """Yield ``(line, header, shown)`` for every top-level statement: the words before its first ``{``.

    ``header`` has string contents blanked (what the scope check judges); ``shown`` is the original
    text for messages.

    Strings and comments are blanked first; inside blocks only braces matter, so the scan skips
    element lists of any size at regular-expression speed.
    """
    text = _LEXEME.sub(_blank, content)
    counted = [0, 1]  # position up to which newlines are counted, line number there

    def line_of(position):
        counted[1] += text.count("\n", counted[0], position)
        counted[0] = position
        return counted[1]

    pos = start = 0
    while True:
        match = _TOP.search(text, pos)
        end = match.start() if match else len(text)
        segment = text[start:end]
        header = " ".join(segment.split())
        if header:
            first = line_of(start + len(segment) - len(segment.lstrip()))
            shown = " ".join(_LEXEME.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "",
                                         content[start:end]).split())
        if not match:
            if header:
                yield first, header, shown
            return
        char = match.group(0)
        if char == "}":
            raise ApplyError("content line %d: unbalanced '}'" % line_of(end))
        if header or char == "{":
            yield (first, header, shown) if header else (line_of(end), "", "")
        pos = end + 1
        if char == "{":
            opened = line_of(end)
            depth = 1
            while depth:
                inner = _INNER.search(text, pos)
                if not inner:
                    raise ApplyError("content: unbalanced '{' (the block opened on line %d is never closed)" % opened)
                depth += 1 if inner.group(0) == "{" else -1
                pos = inner.end()
        start = pos


def _in_scope(header):
    words = header.split()
    if words[:3] == ["table", "inet", "mseg"] and len(words) == 3:
        return True
    if len(words) >= 4 and words[0] in _VERBS:
        if words[1] == "table":
            return words[2:] == ["inet", "mseg"]
        obj = 3 if words[1] == "ct" else 2
        if words[1] in _OBJECTS:
            return words[obj:obj + 2] == ["inet", "mseg"]
    return False


def check_scope(content):
    """Raise ``ApplyError`` unless every statement of ``content`` stays inside table ``inet mseg``."""
    bad = []
    defines = False
    for line, header, shown in _statements(content):
        if header and not _in_scope(header):
            bad.append("line %d: '%s'" % (line, shown[:80]))
        if header.split()[:3] == ["table", "inet", "mseg"]:
            defines = True
    if bad:
        raise ApplyError(
            "content touches more than table inet mseg (%s); mseg.fleet never runs 'flush ruleset' and never "
            "changes other tables: render the ruleset with mseg.fleet and keep every statement inside table "
            "inet mseg" % "; ".join(bad[:5]))
    if not defines:
        raise ApplyError("content does not define 'table inet mseg { ... }': pass the ruleset rendered by mseg.fleet")


# --------------------------------------------------------------------------- management peers


def parse_ssh_connection(value):
    """``"client cport server sport"`` (SSH_CONNECTION) or ``"client cport sport"`` (SSH_CLIENT) -> (ip, port)."""
    words = (value or "").split()
    if len(words) not in (3, 4):
        return None
    try:
        address = ipaddress.ip_address(words[0].split("%")[0])
        port = int(words[-1])
    except ValueError:
        return None
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    if not 0 < port < 65536:
        return None
    return str(address), port


def _environ_of(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            raw = handle.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def _parent_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            stat = handle.read()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def detect_ssh_peer(environ=None, pid=None):
    """The controller's (address, sshd port) as this host sees them, or None for a non-SSH connection.

    ``SSH_CONNECTION``/``SSH_CLIENT`` of this process first; ``become`` (sudo, su) strips them, so
    then the environment of each ancestor process up to the sshd session.
    """
    environ = os.environ if environ is None else environ
    for key in ("SSH_CONNECTION", "SSH_CLIENT"):
        peer = parse_ssh_connection(environ.get(key))
        if peer:
            return peer
    pid = os.getppid() if pid is None else pid
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        env = _environ_of(pid)
        for key in ("SSH_CONNECTION", "SSH_CLIENT"):
            peer = parse_ssh_connection(env.get(key))
            if peer:
                return peer
        pid = _parent_of(pid)
    return None


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _boottime():
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def ssh_connection_started(pid=None):
    """Boot-clock second at which sshd accepted the connection this process runs over, or None (not SSH).

    The per-connection sshd process is the ``sshd`` ancestor whose parent is the listening sshd; it is
    forked right after ``accept()``, so a connection whose process started after the new ruleset went
    live was opened through that ruleset.
    """
    pid = os.getpid() if pid is None else pid
    chain = []
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        chain.append(pid)
        pid = _parent_of(pid)
    sshd = [p for p in chain if _comm(p) == "sshd"]
    if len(sshd) < 2:
        return None
    try:
        with open("/proc/%d/stat" % sshd[-2]) as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return ticks / float(os.sysconf("SC_CLK_TCK"))


def management_elements(peers):
    """``add element`` lines for the auto-management sets, one per (address, port)."""
    lines = []
    for address, port in sorted(set(peers)):
        family = "v%d" % ipaddress.ip_address(address).version
        lines.append("add element inet mseg mgmt_auto_%s { %s . %d }" % (family, address, port))
    return lines


def build_transaction(content, peers):
    """The complete, atomic ``nft -f`` text: preamble, the content, then the management elements."""
    for address, _port in peers:
        name = "mgmt_auto_v%d" % ipaddress.ip_address(address).version
        if not re.search(r"\bset\s+%s\b" % name, content):
            raise ApplyError(
                "content does not declare set %s, so the controller's SSH address %s cannot be added as a management "
                "entry: render the ruleset with mseg.fleet (every mode declares it) or set management_auto: false"
                % (name, address))
    body = content if content.endswith("\n") else content + "\n"
    extra = "".join(line + "\n" for line in management_elements(peers))
    return PREAMBLE + body + extra


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- nft


def find_nft():
    """Path of the nft binary, or ApplyError."""
    path = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin:/usr/local/sbin")
    if not path:
        raise ApplyError("nft is not installed on this host: install the nftables package "
                         "(the mseg.fleet.kernel_prereqs role does); nothing was changed")
    return path


_KERNEL_HINTS = ("Operation not supported", "Protocol not supported", "Address family not supported",
                 "cache initialization failed")


class Nft:
    """Thin wrapper around the nft binary; ``runner`` is replaceable in unit tests."""

    def __init__(self, path=None, runner=None):
        self.path = path or find_nft()
        self.runner = runner or subprocess.run

    def _run(self, args, text=None):
        proc = self.runner([self.path] + args, input=text, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def probe(self):
        """Fail clearly when the kernel has no nf_tables (the netlink query is cheap; nft explains failures)."""
        if ruleset_genid() is not None:
            return
        rc, _out, err = self._run(["list", "tables"])
        if rc != 0:
            if any(hint in err for hint in _KERNEL_HINTS):
                raise ApplyError("the kernel has no usable nf_tables support (%s): use a kernel with "
                                 "CONFIG_NF_TABLES and CONFIG_NF_TABLES_INET (>= 4.18); nothing was changed"
                                 % err.strip().splitlines()[-1])
            raise ApplyError("nft cannot read the ruleset: %s; nothing was changed" % err.strip())

    def check(self, text, what="ruleset"):
        rc, _out, err = self._run(["-c", "-f", "-"], text)
        if rc != 0:
            raise ApplyError("nft rejected the %s (nft -c -f): %s; nothing was changed"
                             % (what, _clip(err.strip().replace("/dev/stdin", "content"))))

    def load(self, text):
        rc, _out, err = self._run(["-f", "-"], text)
        if rc != 0:
            raise ApplyError("nft failed to load the ruleset (the kernel kept the previous one): %s"
                             % _clip(err.strip().replace("/dev/stdin", "content")))

    def listing(self):
        """Table inet mseg listed without counters, or None when it does not exist."""
        rc, out, err = self._run(["-s", "list", "table", "inet", "mseg"])
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise ApplyError("nft cannot list table inet mseg: %s" % err.strip())
        return out


def _clip(text, limit=1500):
    return text if len(text) <= limit else text[:limit] + " ..."


def ruleset_genid():
    """The kernel's nf_tables generation id of this network namespace (bumps on every commit), or None."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    except (OSError, AttributeError):
        return None
    try:
        sock.settimeout(2)
        payload = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
        # nlmsghdr: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, NLM_F_REQUEST
        sock.send(struct.pack("=IHHII", 16 + len(payload), (10 << 8) | 16, 1, 1, 0) + payload)
        data = sock.recv(65536)
    except OSError:
        return None
    finally:
        sock.close()
    length, mtype = struct.unpack_from("=IH", data)
    offset = 20
    while mtype != 2 and offset + 4 <= min(length, len(data)):
        alen, atype = struct.unpack_from("=HH", data, offset)
        if atype & 0x3FFF == 1 and alen >= 8:  # NFTA_GEN_ID
            return struct.unpack_from(">I", data, offset + 4)[0]
        offset += max(4, (alen + 3) & ~3)
    return None


def _identity():
    """Boot and network namespace identity: a recorded generation id is only meaningful within them."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = ""
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    return "%s/%s" % (boot, netns)


# --------------------------------------------------------------------------- counting


def count_listing(listing):
    """Counts of rules, sets and set elements in an ``nft -s list table`` listing."""
    rules = sets = elements = 0
    in_chain = in_elements = False
    for raw in (listing or "").splitlines():
        line = raw.strip()
        if in_elements:
            elements += line.count(",") + (0 if line.endswith(",") else 1)
            if line.endswith("}"):
                in_elements = False
            continue
        if line.startswith(("set ", "map ")) and line.endswith("{"):
            sets += 1
            in_chain = False
        elif line.startswith("chain ") and line.endswith("{"):
            in_chain = True
        elif line.startswith("elements = {"):
            rest = line[len("elements = {"):].strip()
            if rest:
                elements += rest.count(",") + (0 if rest.endswith(",") else 1)
            in_elements = not line.endswith("}")
        elif line == "}":
            in_chain = False
        elif in_chain and line and not line.startswith(("type ", "policy ", "comment ")):
            rules += 1
    return {"rules": rules, "sets": sets, "elements": elements}


# --------------------------------------------------------------------------- files


class Paths:
    def __init__(self, state_dir=DEFAULT_STATE_DIR, unit_dir=DEFAULT_UNIT_DIR):
        self.dir = state_dir
        self.ruleset = os.path.join(state_dir, "ruleset.nft")
        self.prev = os.path.join(state_dir, "ruleset.prev.nft")
        self.live = os.path.join(state_dir, "live.nft")
        self.state = os.path.join(state_dir, "state.json")
        self.script = os.path.join(state_dir, "restore.sh")
        self.lock = os.path.join(state_dir, "lock")
        self.txn = os.path.join(state_dir, "txn")
        self.unit_dir = unit_dir
        self.unit = os.path.join(unit_dir, UNIT_NAME) if unit_dir else None
        self.wants = os.path.join(unit_dir, "sysinit.target.wants", UNIT_NAME) if unit_dir else None


def write_atomic(path, text, mode=0o600):
    """Write ``text`` (str or bytes) to ``path`` so that a reader (or a crash) sees the old or the new file,
    never a part."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if os.geteuid() == 0:
            os.chown(tmp, 0, 0)
        os.rename(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _unlink(path):
    try:
        os.unlink(path)
        return True
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def prepare_state_dir(paths):
    """Create ``state_dir`` (0700, root) and prove it is writable, before anything is applied."""
    try:
        os.makedirs(paths.dir, mode=0o700, exist_ok=True)
        os.chmod(paths.dir, 0o700)
        if os.geteuid() == 0:
            os.chown(paths.dir, 0, 0)
        # a name of its own: two applies may prove the directory at once, before either holds the lock
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=paths.dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ApplyError("cannot write the state directory %s (%s): make it a writable local directory owned by root, "
                         "or point state_dir elsewhere; nothing was applied" % (paths.dir, exc.strerror or exc))


def persisted_text(transaction):
    """The persisted file: a header with the sha256 of the transaction, then the transaction."""
    return "%s%s\n%s" % (HASH_HEADER, sha256(transaction), transaction)


def persisted_ok(paths, transaction):
    text = _read(paths.ruleset)
    return text == persisted_text(transaction)


def load_state(paths):
    text = _read(paths.state)
    if not text:
        return {}
    try:
        state = json.loads(text)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


RESTORE_SCRIPT = """#!/bin/sh
# Written by mseg.fleet nft_apply; run by {unit} at boot. Do not edit: the next apply rewrites it.
# Loads {ruleset} (table inet mseg only) after verifying its sha256 header and nft -c.
# Fails closed: a missing header, a checksum mismatch or a file nft rejects is NOT loaded; the
# fail-closed table below is loaded instead (input: drop everything except loopback, established
# and related flows, ICMPv6 neighbour discovery and new SSH connections on port(s) {ssh_ports};
# output: accept) and the reason goes to the journal. Repair by re-running the apply.
set -u
file={ruleset}
nft={nft}
fail() {{
    echo "mseg-restore: $1; loading the fail-closed table (only SSH on {ssh_ports} is let in)" >&2
    "$nft" -f - <<'EOF'
table inet mseg {{}}
delete table inet mseg
table inet mseg {{
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} accept
        tcp dport {{ {ssh_ports} }} accept
        counter name "mode_failsafe" comment "mseg fail-closed: persisted ruleset rejected"
    }}
    counter mode_failsafe {{
    }}
}}
EOF
    exit 1
}}
[ -r "$file" ] || fail "$file is missing or unreadable"
want=$(head -n 1 "$file" | sed -n 's/^{header}//p')
have=$(tail -n +2 "$file" | sha256sum | cut -d' ' -f1)
[ -n "$want" ] || fail "$file has no sha256 header (corrupt)"
[ "$want" = "$have" ] || fail "$file is corrupt (sha256 $have, expected $want)"
err=$(tail -n +2 "$file" | "$nft" -c -f - 2>&1) || fail "nft rejects $file: $err"
tail -n +2 "$file" | "$nft" -f - || fail "nft failed to load $file"
echo "mseg-restore: loaded $file (sha256 $want)"
"""

UNIT_TEXT = """# Written by mseg.fleet nft_apply. Restores table inet mseg at boot, after the distribution's
# nftables.service (whose config usually starts with "flush ruleset") and before the network.
[Unit]
Description=mseg.fleet: restore the nftables table inet mseg
Documentation=https://example.invalid/mseg/fleet/docs
DefaultDependencies=no
After=nftables.service
Before=network-pre.target shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {script}
SyslogIdentifier=mseg-restore

[Install]
WantedBy=sysinit.target
"""


def _ssh_ports(peers):
    ports = sorted({port for _addr, port in peers} | {22})
    return ", ".join(str(port) for port in ports)


def persist(paths, transaction, peers, nft_path):
    """Write the persisted ruleset, the restore script and the enabled boot unit. Returns True if anything changed."""
    changed = False
    wanted = {
        paths.ruleset: persisted_text(transaction),
        paths.script: RESTORE_SCRIPT.format(unit=UNIT_NAME, ruleset=paths.ruleset, nft=nft_path,
                                            header=HASH_HEADER, ssh_ports=_ssh_ports(peers)),
    }
    for path, text in wanted.items():
        if _read(path) != text:
            write_atomic(path, text)
            changed = True
    if paths.unit:
        unit_text = UNIT_TEXT.format(ruleset=paths.ruleset, script=paths.script)
        try:
            os.makedirs(os.path.dirname(paths.wants), exist_ok=True)
            if _read(paths.unit) != unit_text:
                write_atomic(paths.unit, unit_text, 0o644)
                changed = True
            if os.path.realpath(paths.wants) != os.path.realpath(paths.unit):
                _unlink(paths.wants)
                os.symlink(paths.unit, paths.wants)
                changed = True
        except OSError as exc:
            raise ApplyError("the ruleset is live but the boot unit %s could not be written (%s): make %s writable"
                             % (paths.unit, exc.strerror or exc, paths.unit_dir))
        if changed and os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
            subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)
    return changed


def unpersist(paths):
    """Remove the persisted ruleset, script and boot unit. Returns True if anything was removed."""
    removed = False
    for path in (paths.ruleset, paths.script, paths.wants, paths.unit):
        if path and _unlink(path):
            removed = True
    if removed and paths.unit and os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)
    return removed


# --------------------------------------------------------------------------- lock


class Lock:
    """Exclusive ``flock`` on ``<state_dir>/lock``; two applies on one host never interleave."""

    def __init__(self, paths, timeout):
        self.path = paths.lock
        self.timeout = timeout
        self.fd = None

    def acquire(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = (_read(self.path) or "").strip() or "unknown"
                    os.close(self.fd)
                    self.fd = None
                    raise ApplyError("another mseg apply holds %s (%s) for more than %ss: wait for it to finish or "
                                     "raise lock_timeout; nothing was changed" % (self.path, holder, self.timeout))
                time.sleep(0.05)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid %d" % os.getpid()).encode())
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------- the apply


class Request:
    """What to apply. ``content`` is the rendered ruleset; ``peers`` the management (address, port) pairs."""

    def __init__(self, content="", state="present", persist=True, peers=(), state_dir=DEFAULT_STATE_DIR,
                 unit_dir=DEFAULT_UNIT_DIR, lock_timeout=300, check_mode=False, want_diff=False):
        if state not in ("present", "absent"):
            raise ApplyError("state must be present or absent, got %r" % (state,))
        self.content = content or ""
        self.state = state
        self.persist = persist
        self.peers = [(str(a), int(p)) for a, p in peers]
        self.paths = Paths(state_dir, unit_dir)
        self.lock_timeout = lock_timeout
        self.check_mode = check_mode
        self.want_diff = want_diff


class Engine:
    def __init__(self, request, nft=None):
        self.req = request
        self.paths = request.paths
        self.nft = nft
        self.transaction = None
        self.desired_sha = None

    # -- planning -----------------------------------------------------------------

    def prepare(self):
        """Checks that need no lock: scope, nft present, kernel support. Builds the transaction."""
        if self.req.state == "present":
            if not self.req.content.strip():
                raise ApplyError("content is empty: pass the rendered ruleset (state: present needs it)")
            check_scope(self.req.content)
            self.transaction = build_transaction(self.req.content, self.req.peers)
        else:
            self.transaction = PREAMBLE
        self.desired_sha = sha256(self.transaction)
        if self.nft is None:
            self.nft = Nft()
        self.nft.probe()

    def evaluate(self):
        """Compare desired with live. Returns dict: in_sync, drift, before (listing or None), recorded state.

        When the kernel's generation id, boot and network namespace are those recorded after the last
        apply, no table has changed since (every committed transaction bumps the id), so the recorded
        listing is the live one and listing 100,000 elements again is skipped.
        """
        state = load_state(self.paths)
        genid = ruleset_genid()
        recorded = _read(self.paths.live)
        untouched = (genid is not None and state.get("genid") == genid and state.get("identity") == _identity()
                     and "live_sha256" in state
                     and state["live_sha256"] == (None if recorded is None else sha256(recorded)))
        before = recorded if untouched else self.nft.listing()
        if self.req.state == "absent":
            in_sync = before is None
            drift = False
        else:
            same_live = before is not None and recorded is not None and before == recorded
            in_sync = same_live and state.get("desired_sha256") == self.desired_sha
            drift = (before != recorded) and state.get("desired_sha256") is not None
        return {"in_sync": in_sync, "drift": drift, "before": before, "state": state, "listed": not untouched,
                "genid": genid}

    def predict_after(self):
        """The listing the transaction would produce, from a scratch network namespace when possible."""
        if self.req.state == "absent":
            return ""
        unshare = shutil.which("unshare") or shutil.which("unshare", path="/usr/bin:/bin")
        if unshare:
            script = "%s -f - && %s -s list table inet mseg" % (self.nft.path, self.nft.path)
            proc = subprocess.run([unshare, "--net", "sh", "-c", script], input=self.transaction,
                                  capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                return proc.stdout
        return self.transaction

    # -- doing --------------------------------------------------------------------

    def backup(self, before):
        """Keep the table that is live now as a loadable transaction (absent table -> delete-only)."""
        text = PREAMBLE + (before or "")
        write_atomic(self.paths.prev, text)
        return text

    def record(self):
        """After a load: record generation id, listing and hashes. Returns (listing, counts)."""
        genid = ruleset_genid()
        listing = self.nft.listing()
        counts = count_listing(listing)
        if listing is None:
            _unlink(self.paths.live)
        else:
            write_atomic(self.paths.live, listing)
        state = {"desired_sha256": self.desired_sha if self.req.state == "present" else None,
                 "live_sha256": None if listing is None else sha256(listing),
                 "genid": genid, "identity": _identity(), "counts": counts,
                 "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "peers": self.req.peers}
        write_atomic(self.paths.state, json.dumps(state, indent=1, sort_keys=True) + "\n")
        return listing, counts

    def finish_persist(self):
        if self.req.state == "present" and self.req.persist:
            return persist(self.paths, self.transaction, self.req.peers, self.nft.path)
        return unpersist(self.paths)

    def persist_in_sync(self):
        if self.req.state == "present" and self.req.persist:
            return persisted_ok(self.paths, self.transaction) and (
                not self.paths.unit or (os.path.exists(self.paths.unit) and os.path.lexists(self.paths.wants)))
        return not any(os.path.lexists(p) for p in (self.paths.ruleset, self.paths.unit, self.paths.wants) if p)

    def result(self, changed, before, after, counts, drift, msg):
        res = {"changed": changed, "sha256": self.desired_sha if self.req.state == "present" else None,
               "rules": counts["rules"], "sets": counts["sets"], "elements": counts["elements"],
               "rolled_back": False, "drift": drift, "msg": msg,
               "management_peers": ["%s . %d" % p for p in self.req.peers],
               "backup": self.paths.prev,
               "persisted": self.paths.ruleset if self.req.persist and self.req.state == "present" else None}
        if self.req.want_diff and before is not None and after is not None:
            res["diff"] = {"before": before, "after": after,
                           "before_header": "live table inet mseg", "after_header": "desired table inet mseg"}
        return res

    def run(self):
        """Synchronous apply (no commit-confirmed). Returns the result dict; raises ApplyError."""
        self.prepare()
        if self.req.check_mode:
            return self._run_locked()
        prepare_state_dir(self.paths)
        with Lock(self.paths, self.req.lock_timeout):
            return self._run_locked()

    def _run_locked(self):
        check = None
        if self.req.state == "present" and not self.req.check_mode \
                and load_state(self.paths).get("desired_sha256") != self.desired_sha:
            check = _Background(self.nft.check, self.transaction)  # certain to be needed; overlaps the listing
        try:
            ev = self.evaluate()
        except ApplyError:
            if check:
                check.wait()
            raise
        persist_ok = self.persist_in_sync()
        if ev["in_sync"]:
            counts = ev["state"].get("counts") or count_listing(ev["before"])
            changed = not persist_ok
            if changed and not self.req.check_mode:
                self.finish_persist()
            if ev.get("listed") and ev.get("genid") is not None and not self.req.check_mode \
                    and ev["state"].get("genid") != ev["genid"]:
                ev["state"].update(genid=ev["genid"], identity=_identity())
                write_atomic(self.paths.state, json.dumps(ev["state"], indent=1, sort_keys=True) + "\n")
            msg = "table inet mseg already matches" + ("; persisted copy repaired" if changed else "")
            return self.result(changed, ev["before"], ev["before"], counts, False, msg)
        if self.req.check_mode:
            after = self.predict_after() if self.req.want_diff else None
            counts = count_listing(after if after and after != self.transaction else ev["before"])
            return self.result(True, ev["before"] or "", after, counts, ev["drift"],
                               "would replace table inet mseg" + (" (live table drifted)" if ev["drift"] else ""))
        if check:
            check.result()
        elif self.req.state == "present":
            self.nft.check(self.transaction)
        self.backup(ev["before"])
        self.nft.load(self.transaction)
        after, counts = self.record()
        self.finish_persist()
        verb = "replaced" if self.req.state == "present" else "removed"
        msg = "%s table inet mseg%s" % (verb, " (corrected drift)" if ev["drift"] else "")
        return self.result(True, ev["before"] or "", after or "", counts, ev["drift"], msg)


class _Background:
    """Run ``func(*args)`` in a thread; ``result()`` joins it and re-raises its exception."""

    def __init__(self, func, *args):
        self.error = None
        self.value = None

        def target():
            try:
                self.value = func(*args)
            except Exception as exc:  # handed to the caller by result()
                self.error = exc
        self.thread = threading.Thread(target=target)
        self.thread.daemon = True
        self.thread.start()

    def wait(self):
        self.thread.join()

    def result(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def apply(request, nft=None):
    """Apply ``request`` now (no commit-confirmed). Returns the result dict; raises ApplyError."""
    return Engine(request, nft).run()


# --------------------------------------------------------------------------- commit-confirmed


def _txn_dir(paths, token):
    if not re.match(r"^[a-f0-9]{8,64}$", token or ""):
        raise ApplyError("invalid commit-confirmed transaction token %r" % (token,))
    return os.path.join(paths.txn, token)


def arm(request, token, confirm_timeout):
    """Start a commit-confirmed apply.

    Validates and evaluates synchronously; when nothing would change, returns the unchanged result.
    Otherwise forks a detached worker (own session, survives the loss of the connection) that takes
    the lock, waits for ``<txn>/go``, backs up and applies, then waits ``confirm_timeout`` seconds
    for ``confirm``; without it the worker restores the previous table. The persisted file and the
    recorded state are only written once confirmed, so a rollback (or a reboot in the window) brings
    back the previous ruleset everywhere.
    """
    engine = Engine(request)
    engine.prepare()
    prepare_state_dir(request.paths)
    with Lock(request.paths, request.lock_timeout):
        ev = engine.evaluate()
        if ev["in_sync"] and engine.persist_in_sync():
            res = engine._run_locked()
            res["armed"] = False
            return res
        if request.state == "present":
            engine.nft.check(engine.transaction)
    txn = _txn_dir(request.paths, token)
    os.makedirs(txn, mode=0o700)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs detached
        os.close(read_fd)
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, 65536)
            _worker(request, engine, txn, confirm_timeout, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as pipe:
        started = pipe.read().strip()
    if started != "locked":
        raise ApplyError("the commit-confirmed worker could not start: %s" % (started or "no answer"))
    return {"changed": True, "armed": True, "txn": txn, "go": os.path.join(txn, "go"),
            "msg": "commit-confirmed apply armed"}


def _worker(request, engine, txn, confirm_timeout, status_fd):  # pragma: no cover - runs detached
    def report(text):
        write_atomic(os.path.join(txn, "result.json"), json.dumps(text))

    try:
        lock = Lock(request.paths, request.lock_timeout).acquire()
    except ApplyError as exc:
        os.write(status_fd, str(exc).encode())
        os.close(status_fd)
        return
    os.write(status_fd, b"locked")
    os.close(status_fd)
    try:
        go = os.path.join(txn, "go")
        deadline = time.monotonic() + GO_WAIT
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                report({"failed": True, "msg": "the controller never started the armed apply; nothing was changed"})
                return
            time.sleep(0.05)
        time.sleep(GO_GRACE)
        try:
            ev = engine.evaluate()
            before = ev["before"]
            backup = engine.backup(before)
            engine.nft.load(engine.transaction)
            after = engine.nft.listing()
        except ApplyError as exc:
            report({"failed": True, "msg": str(exc)})
            return
        applied_at = _boottime()
        armed = os.path.join(txn, "armed")
        write_atomic(armed, str(confirm_timeout))
        report({"applied": True, "before": before or "", "after": after or "", "drift": ev["drift"],
                "applied_at": applied_at})
        deadline = time.monotonic() + confirm_timeout
        while time.monotonic() < deadline and os.path.exists(armed):
            time.sleep(0.1)
        try:
            os.rename(armed, os.path.join(txn, "expired"))
        except OSError:
            pass  # renamed to "confirmed" by confirm(): keep the new ruleset
        else:
            try:
                engine.nft.load(backup)
                why = ("no confirmation reached the host within confirm_timeout=%ss after the new ruleset went live; "
                       "the previous table inet mseg was restored" % confirm_timeout)
            except ApplyError as exc:
                why = "no confirmation within %ss, and restoring the previous table failed: %s" % (confirm_timeout, exc)
            write_atomic(os.path.join(txn, "final.json"),
                         json.dumps({"rolled_back": True, "msg": why}))
            return
        counts = engine.record()[1]
        engine.finish_persist()
        final = engine.result(True, before or "", after or "", counts, ev["drift"],
                              "replaced table inet mseg (commit confirmed)")
        final.pop("diff", None)
        write_atomic(os.path.join(txn, "final.json"), json.dumps(final))
    except Exception as exc:  # the detached worker has no one else to tell
        write_atomic(os.path.join(txn, "final.json"), json.dumps({"failed": True, "msg": "worker error: %s" % exc}))
    finally:
        lock.release()


def confirm(paths, token, connection_started=None, wait=RESULT_WAIT):
    """Confirm an armed apply over a fresh connection; returns its final result (or the rollback).

    ``connection_started`` (boot-clock seconds, see ``ssh_connection_started``) proves the connection
    is fresh: a connection opened before the new ruleset went live proves nothing, so it gets
    ``{"pending": True, "stale": True}`` and the controller must reconnect.
    """
    txn = _txn_dir(paths, token)
    if not os.path.isdir(txn):
        raise ApplyError("no commit-confirmed transaction %s on this host" % txn)
    deadline = time.monotonic() + wait
    result = None
    while time.monotonic() < deadline:
        result = json.loads(_read(os.path.join(txn, "result.json")) or "null")
        if result is not None:
            break
        time.sleep(0.05)
    if result is None:
        return {"pending": True, "msg": "the armed apply has not finished within %ss" % wait}
    if result.get("failed"):
        shutil.rmtree(txn, ignore_errors=True)
        raise ApplyError(result["msg"])
    if connection_started is not None and connection_started <= result["applied_at"] \
            and os.path.exists(os.path.join(txn, "armed")):
        return {"pending": True, "stale": True,
                "msg": "this connection was opened before the new ruleset went live; reconnect to confirm"}
    try:
        os.rename(os.path.join(txn, "armed"), os.path.join(txn, "confirmed"))
    except OSError:
        pass  # expired: the worker is rolling back
    while time.monotonic() < deadline + wait:
        final = json.loads(_read(os.path.join(txn, "final.json")) or "null")
        if final is not None:
            if final.get("failed"):
                shutil.rmtree(txn, ignore_errors=True)
                raise ApplyError(final["msg"])
            final["diff"] = {"before": result["before"], "after": result["after"],
                             "before_header": "live table inet mseg", "after_header": "desired table inet mseg"}
            shutil.rmtree(txn, ignore_errors=True)
            return final
        time.sleep(0.05)
    return {"pending": True, "msg": "the commit-confirmed worker did not finish"}
