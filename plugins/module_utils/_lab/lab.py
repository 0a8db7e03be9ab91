# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local virtual fleet: Debian hosts booted with ``systemd-nspawn`` on a private bridge.

Plain Python (no Ansible imports) so that unit tests and the module share it.  A lab has a short
name; every kernel object it creates (bridge, veth pairs, machine names), its state directory and its
subnet derive from that name.  Everything the lab creates is written to ``state.json`` *before* it is
created, so :func:`lab_down` removes exactly that, also after a crash half-way through :func:`lab_up`; with a
damaged state file it removes what it can tie to the state directory, and never deletes through a mount.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import FileLock, write_atomic

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

# Every package a role needs on a lab host: hosts have no network access to a mirror, so the image
# must carry them all.  This one list keys the root file system cache.  debootstrap does not resolve
# virtual packages, so their providers are listed (python3-cffi-backend for python3-cryptography).
DEFAULT_PACKAGES = (
    "ca-certificates", "curl", "dbus", "iproute2", "iputils-ping", "keepalived", "kmod", "logrotate",
    "nftables", "nginx-light", "openssh-server", "openssl", "procps", "python3", "python3-apt",
    "python3-cffi-backend", "python3-cryptography", "sudo", "systemd", "systemd-sysv",
)
# Services that the image carries for the roles but that must not run until a role configures them.
DISABLED_UNITS = ("nginx.service", "keepalived.service")
# Units that only cost CPU in a short-lived lab host.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
                "man-db.timer", "logrotate.timer", "systemd-journald-audit.socket")
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Beyond debootstrap's own timeout, what preparing an image may take (three chrooted systemctl calls of 60 s).
BUILD_MARGIN = 300
IMAGE_FORMAT = 1  # bump when the image preparation below changes, so cached images are rebuilt

V4_POOL = ipaddress.ip_network("10.213.0.0/16")
V6_BASE = "fd6d:7365:6700"  # ULA; the lab's /24 index becomes the fourth hextet
HOST_OFFSET = 10  # the bridge is .1, hosts start at .10
# Every guest's systemd takes several inotify instances, counted against root on the control node; the
# kernel default of 128 stops systemd in the ~20th guest ("Failed to allocate manager object").
INOTIFY_LIMITS = (("fs/inotify/max_user_instances", 8192), ("fs/inotify/max_user_watches", 524288))
STATE_FILE = "state.json"


class LabError(MsegError):
    """A lab operation failed; the message says what, where and how to fix it."""


# ---------------------------------------------------------------- names and addresses

def validate_name(name):
    if not isinstance(name, str) or not LAB_NAME_RE.match(name):
        raise LabError("lab name %r is invalid: use 1-32 characters a-z, 0-9, '_' or '-', starting with a letter"
                       % (name,))
    return name


def lab_tag(name):
    """Short id (<= 8 chars) used in interface names: the name itself when it fits, else a hash."""
    validate_name(name)
    compact = re.sub(r"[^a-z0-9]", "", name)
    if len(compact) <= 8 and compact == name:
        return compact
    return compact[:4] + hashlib.sha256(name.encode()).hexdigest()[:4]


def bridge_name(name):
    return "mslb-" + lab_tag(name)


def machine_name(name, index):
    """Machine name of host ``index``; systemd-nspawn names the host side of its veth ``vb-<machine>``."""
    if not 0 <= index < 100:
        raise LabError("a lab holds at most 100 hosts; host index %d is out of range" % index)
    return "%s%02d" % (lab_tag(name), index)


def host_veth_name(name, index):
    """Host side of the veth of host ``index`` (<= 13 characters, so systemd-nspawn never shortens it)."""
    return "vb-" + machine_name(name, index)


def default_subnet_index(name):
    """Deterministic /24 index in 10.213.0.0/16 for a lab; 0 is reserved for committed inventories."""
    return 1 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 254


def subnets_for_index(index):
    v4 = ipaddress.ip_network("10.213.%d.0/24" % index)
    v6 = ipaddress.ip_network("%s:%x::/64" % (V6_BASE, index))
    return v4, v6


def networks_in_use():
    """IPv4 networks configured on any interface of this machine (other labs' bridges included)."""
    out = run(["ip", "-j", "-4", "addr", "show"], timeout=10).stdout
    nets = []
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            nets.append(ipaddress.ip_network("%s/%s" % (addr["local"], addr["prefixlen"]), strict=False))
    return nets


def choose_subnets(name, in_use):
    """First free /24 of the pool starting at the lab's deterministic index."""
    start = default_subnet_index(name)
    for step in range(254):
        index = 1 + (start - 1 + step) % 254
        v4, v6 = subnets_for_index(index)
        if not any(v4.overlaps(net) for net in in_use):
            return v4, v6
    raise LabError("no free /24 left in %s for lab %r: run 'make lab-down' for labs you no longer need"
                   % (V4_POOL, name))


def plan_hosts(name, hosts, v4, v6):
    """Give each requested host its veth names and addresses (fixed ones are kept, others assigned)."""
    if not hosts:
        raise LabError("lab %r: the host list is empty; give at least one host" % name)
    seen = set()
    planned = []
    for index, host in enumerate(hosts):
        hname = host.get("name")
        if not isinstance(hname, str) or not HOST_NAME_RE.match(hname):
            raise LabError("lab %r: host name %r is invalid: use a-z, 0-9 and '-', starting with a letter"
                           % (name, hname))
        if hname in seen:
            raise LabError("lab %r: host %r is listed twice" % (name, hname))
        seen.add(hname)
        ipv4 = host.get("ipv4") or str(v4.network_address + HOST_OFFSET + index)
        ipv6 = host.get("ipv6") or str(v6.network_address + HOST_OFFSET + index)
        for addr, net in ((ipv4, v4), (ipv6, v6)):
            try:
                parsed = ipaddress.ip_address(addr)
            except ValueError:
                raise LabError("lab %r: host %r has an invalid address %r" % (name, hname, addr))
            if parsed not in net or parsed in (net.network_address, net.network_address + 1,
                                               net.broadcast_address):
                raise LabError("lab %r: address %s of host %r must be a host address in %s other than .1 "
                               "(the bridge)" % (name, addr, hname, net))
        planned.append({"name": hname, "index": index, "ipv4": ipv4, "ipv6": ipv6,
                        "host_veth": host_veth_name(name, index), "machine": machine_name(name, index)})
    for key in ("ipv4", "ipv6"):
        addrs = [h[key] for h in planned]
        dup = sorted(set(a for a in addrs if addrs.count(a) > 1))
        if dup:
            raise LabError("lab %r: address %s is given to more than one host" % (name, ", ".join(dup)))
    return planned


def subnets_from_hosts(hosts):
    """Lab subnets implied by fixed host addresses (a committed inventory), or None if none are fixed."""
    v4s = set()
    v6s = set()
    for host in hosts:
        if host.get("ipv4"):
            v4s.add(ipaddress.ip_network(host["ipv4"] + "/24", strict=False))
        if host.get("ipv6"):
            v6s.add(ipaddress.ip_network(host["ipv6"] + "/64", strict=False))
    if not v4s:
        return None
    if len(v4s) > 1 or len(v6s) > 1 or not v6s:
        raise LabError("fixed lab addresses must all lie in one IPv4 /24 and one IPv6 /64, and every host with an "
                       "IPv4 address needs an IPv6 one; found %s" % ", ".join(sorted(str(n) for n in v4s | v6s)))
    return v4s.pop(), v6s.pop()


# ---------------------------------------------------------------- processes

def run(cmd, timeout, check=True, env=None):
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              universal_newlines=True, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise LabError("'%s' did not finish within %d s" % (" ".join(cmd), timeout))
    except OSError as exc:
        raise LabError("cannot run '%s': %s (is the package that provides it installed? 'make setup')"
                       % (cmd[0], exc))
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()[-2000:]
        raise LabError("'%s' failed with exit code %d: %s" % (" ".join(cmd), proc.returncode, output))
    return proc


def link_exists(ifname):
    return os.path.exists("/sys/class/net/%s" % ifname)


def pid_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except (IOError, OSError):
        return None


def nspawn_command(pid):
    """The command line of ``pid`` if it is a systemd-nspawn, else None."""
    cmd = pid_cmdline(pid)
    # setsid(1) execs systemd-nspawn in the same process; for a moment the command line is setsid's.
    if cmd and os.path.basename(cmd[0]) == "setsid":
        cmd = cmd[1:]
    if cmd and os.path.basename(cmd[0]) == "systemd-nspawn":
        return cmd
    return None


def process_start(pid):
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or None once it is gone.

    A PID with its start time names one process for good: a recycled PID starts later.  A zombie (exited, not
    yet collected by its parent) still has both.
    """
    try:
        with open("/proc/%d/stat" % pid) as handle:
            stat = handle.read()
    except (IOError, OSError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def process_summary(pid):
    """``'<name>, <running|exited: not yet collected by PID <ppid> (<name>)>'`` for an error message."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            stat = handle.read()
    except (IOError, OSError):
        return "gone"
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] != "Z":
        return "%s, running" % comm
    ppid = int(fields[1])
    try:
        with open("/proc/%d/comm" % ppid) as handle:
            parent = handle.read().strip()
    except (IOError, OSError):
        parent = "?"
    return "%s, exited but not yet collected by its parent PID %d (%s)" % (comm, ppid, parent)


def nspawn_option(cmd, option):
    """Value of ``--option=value`` on a command line, or None."""
    for part in cmd:
        if part.startswith(option + "="):
            return part[len(option) + 1:]
    return None


def is_lab_process(pid, root_dir):
    """True if ``pid`` is the systemd-nspawn that boots ``root_dir`` (guards against recycled PIDs)."""
    cmd = nspawn_command(pid)
    return bool(cmd) and ("--directory=" + root_dir) in cmd


def nspawn_processes():
    """Every systemd-nspawn on this machine, as {pid: command line}."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmd = nspawn_command(int(entry))
            if cmd:
                found[int(entry)] = cmd
    return found


def find_lab_processes(root_dir):
    return sorted(pid for pid, cmd in nspawn_processes().items() if ("--directory=" + root_dir) in cmd)


def root_users(root_dir):
    """Processes whose root directory is ``root_dir`` (a guest's, seen from any mount namespace), sorted."""
    try:
        st = os.stat(root_dir)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                other = os.stat("/proc/%s/root" % entry)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                pids.append(int(entry))
    return sorted(pids)


def lab_cgroup_machine(pid):
    """Machine name of the host cgroup (``mseg-lab-<machine>``) that ``pid`` runs in, or None."""
    try:
        with open("/proc/%d/cgroup" % pid) as handle:
            lines = handle.read().splitlines()
    except (IOError, OSError):
        return None
    for line in lines:
        top = line.split(":", 2)[-1].lstrip("/").split("/")[0]
        if top.startswith("mseg-lab-"):
            return top[len("mseg-lab-"):]
    return None


def mount_points():
    """Mount points of this mount namespace (mountinfo escapes space, tab, newline and backslash in octal)."""
    with open("/proc/self/mountinfo") as handle:
        return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in handle]


def is_mounted(path):
    return os.path.realpath(path) in mount_points()


def mounts_under(path):
    """Mount points at or below ``path``, deepest first."""
    real = os.path.realpath(path)
    below = set(m for m in mount_points() if m == real or m.startswith(real.rstrip("/") + "/"))
    return sorted(below, key=len, reverse=True)


def remove_tree(path):
    """``rm -r path``, refused while anything is mounted below it: it would delete through the mount."""
    mounted = mounts_under(path) if os.path.exists(path) else []
    if mounted:
        raise LabError("not removing %s: something is still mounted there (%s); unmount it with 'umount PATH' "
                       "once nothing runs from it, then run 'make lab-down' again" % (path, ", ".join(mounted)))
    shutil.rmtree(path, ignore_errors=True)


def cgroup_roots():
    """Mount points of the cgroup hierarchies systemd tracks processes in (cgroup2, and name=systemd on v1)."""
    roots = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            parts = line.split()
            sep = parts.index("-")
            fstype, superopts = parts[sep + 1], parts[sep + 3].split(",")
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in superopts):
                roots.append(parts[4])
    return roots


def _join_cgroups(paths):
    """Runs in the child before exec: move it into its own cgroups.

    With ``--keep-unit`` and no systemd on the control node, systemd-nspawn hands the guest the cgroup it
    was started in; guests sharing one cgroup tree remove each other's unit cgroups at boot.
    """
    def join():
        for path in paths:
            with open(os.path.join(path, "cgroup.procs"), "w") as handle:
                handle.write("0\n")
    return join


def cgroup_pids(path):
    """Every process left in a host's cgroup tree."""
    pids = set()
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as handle:
                    pids.update(int(line) for line in handle if line.strip())
            except (IOError, OSError):
                continue
    return pids


def remove_cgroup(path, timeout=10):
    """Remove a host's cgroup with the sub-cgroups its systemd created (deepest first).

    Processes still inside (a guest whose systemd-nspawn had to be killed leaves its processes running)
    belong to the lab by construction, so they are killed first.
    """
    if not os.path.isdir(path):
        return
    deadline = time.time() + timeout
    pids = cgroup_pids(path)
    while pids and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
        pids = cgroup_pids(path)
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        while True:
            try:
                os.rmdir(dirpath)
                break
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    break
                if exc.errno != errno.EBUSY or time.time() > deadline:
                    raise LabError("cannot remove cgroup %s: %s (processes left: %s)"
                                   % (dirpath, exc, sorted(cgroup_pids(path)) or "none"))
                time.sleep(0.1)


# ---------------------------------------------------------------- state

_HOST_FIELDS = {"name": str, "ipv4": str, "ipv6": str, "host_veth": str, "machine": str, "dir": str, "root": str,
                "rootfs": str, "method": str}


def _state_problem(data):
    """What makes a parsed ``state.json`` unusable for teardown, or None."""
    if not isinstance(data, dict) or not isinstance(data.get("hosts", {}), dict):
        return "does not hold a mapping with a 'hosts' mapping"
    if not isinstance(data.get("bridge", ""), str):
        return "has a 'bridge' that is not a string"
    for hname, rec in data.get("hosts", {}).items():
        if not isinstance(rec, dict):
            return "has a record for host %r that is not a mapping" % hname
        wrong = [k for k, kind in _HOST_FIELDS.items() if k in rec and not isinstance(rec[k], kind)]
        for key in ("pid", "start_time"):
            value = rec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                wrong.append(key)
        cgroups = rec.get("cgroups", [])
        if not isinstance(cgroups, list) or not all(isinstance(c, str) for c in cgroups):
            wrong.append("cgroups")
        if wrong:
            return "has malformed fields in the record of host %r: %s" % (hname, ", ".join(sorted(wrong)))
    return None


class LabState:
    """``state.json`` in the lab's state directory, rewritten atomically on every change."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.data = {"hosts": {}}
        # Why the file cannot be used, or None.  A crash while writing leaves the previous file in place
        # (rename is atomic), so this is a file damaged or edited by hand: lab_up refuses it and lab_down
        # tears down what it can tie to the state directory instead (see _derived_objects).
        self.problem = None
        if os.path.exists(self.path):
            try:
                with open(self.path) as handle:
                    data = json.load(handle)
            except (IOError, OSError) as exc:
                self.problem = "cannot be read (%s)" % (exc.strerror or exc)
            except ValueError as exc:
                self.problem = "is not valid JSON (%s)" % exc
            else:
                self.problem = _state_problem(data)
                if self.problem is None:
                    self.data = data
        self.data.setdefault("hosts", {})

    def save(self):
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, 0o700)
        write_atomic(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def host(self, hname):
        return self.data["hosts"].setdefault(hname, {})


# ---------------------------------------------------------------- the root file system

def package_key(packages, suite, mirror):
    payload = json.dumps({"packages": sorted(set(packages)), "suite": suite, "mirror": mirror,
                          "format": IMAGE_FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write(path, text, mode=0o644):
    """Write a file of a host's root (its directory created 0755 when missing)."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o755)
    write_atomic(path, text, mode)


def _prepare_image(root, packages, key):
    """Turn a fresh debootstrap tree into the lab image (offline; runs systemctl in the chroot)."""
    env = dict(os.environ, SYSTEMD_OFFLINE="1")
    run(["chroot", root, "systemctl", "enable", "systemd-networkd.service", "ssh.service"], timeout=60, env=env)
    run(["chroot", root, "systemctl", "disable"] + list(DISABLED_UNITS), timeout=60, env=env)
    run(["chroot", root, "systemctl", "mask"] + list(MASKED_UNITS), timeout=60, env=env)
    for entry in os.listdir(os.path.join(root, "etc/ssh")):
        if entry.startswith("ssh_host_"):
            os.unlink(os.path.join(root, "etc/ssh", entry))
    _write(os.path.join(root, "etc/ssh/sshd_config.d/mseg-lab.conf"),
           "# mseg.fleet lab host: key-only root login, one host key generated per host\n"
           "HostKey /etc/ssh/ssh_host_ed25519_key\n"
           "PermitRootLogin prohibit-password\n"
           "PasswordAuthentication no\n"
           "UseDNS no\n")
    # Each host gets its own machine id at first boot.
    _write(os.path.join(root, "etc/machine-id"), "")
    _write(os.path.join(root, "etc/systemd/journald.conf.d/mseg-lab.conf"),
           "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n")
    archives = os.path.join(root, "var/cache/apt/archives")
    for entry in os.listdir(archives):
        if entry.endswith(".deb"):
            os.unlink(os.path.join(archives, entry))
    _write(os.path.join(root, "etc/mseg-lab-image"),
           "key=%s\npackages=%s\n" % (key, " ".join(sorted(set(packages)))))


def ensure_rootfs(cache_dir, packages, suite=DEFAULT_SUITE, mirror=DEFAULT_MIRROR, timeout=1200):
    """Return (path, built) of the cached root file system for ``packages``; build it if missing.

    Concurrent labs wait on a lock file, so the image is built once.  A failed build leaves nothing behind.  A lab
    waits for another one's build as long as a build may take (``timeout`` for debootstrap, and the image
    preparation), then fails naming the process that holds the lock.
    """
    key = package_key(packages, suite, mirror)
    final = os.path.join(cache_dir, "rootfs-" + key)
    if os.path.exists(os.path.join(final, "etc/mseg-lab-image")):
        return final, False
    if not os.path.isdir(cache_dir):
        os.makedirs(cache_dir, 0o755)
    lock_path = os.path.join(cache_dir, "rootfs-%s.lock" % key)
    with FileLock(lock_path, timeout + BUILD_MARGIN, lambda holder: LabError(
            "the root file system %s is still being built by %s (lock %s) after %d s; wait for that lab, or stop it "
            "and run again" % (final, holder, lock_path, timeout + BUILD_MARGIN))):
        if os.path.exists(os.path.join(final, "etc/mseg-lab-image")):
            return final, False
        work = final + ".build"
        shutil.rmtree(work, ignore_errors=True)
        try:
            run(["debootstrap", "--variant=minbase", "--include=" + ",".join(sorted(set(packages))),
                 suite, work, mirror], timeout=timeout)
            _prepare_image(work, packages, key)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return final, True


# ---------------------------------------------------------------- one host

def _host_files(root, host, lab, hosts, pubkey, v4, v6):
    """Per-host identity, addresses and access, written into the host's root before it boots."""
    _write(os.path.join(root, "etc/hostname"), host["name"] + "\n")
    _write(os.path.join(root, "etc/machine-id"), uuid.uuid4().hex + "\n", 0o444)
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback",
             "127.0.1.1 %s" % host["name"]]
    for other in hosts:
        lines.append("%s %s" % (other["ipv4"], other["name"]))
        lines.append("%s %s" % (other["ipv6"], other["name"]))
    _write(os.path.join(root, "etc/hosts"), "\n".join(lines) + "\n")
    _write(os.path.join(root, "etc/systemd/network/10-mseg-lab.network"),
           "# mseg.fleet lab %s: the host's link to the lab bridge\n"
           "[Match]\nName=host0\n\n"
           "[Link]\nRequiredForOnline=yes\n\n"
           "[Network]\nAddress=%s/%d\nAddress=%s/%d\nGateway=%s\n"
           "LinkLocalAddressing=ipv6\nIPv6AcceptRA=no\nIPv6DuplicateAddressDetection=0\n"
           % (lab, host["ipv4"], v4.prefixlen, host["ipv6"], v6.prefixlen,
              v4.network_address + 1))
    ssh_dir = os.path.join(root, "root/.ssh")
    if not os.path.isdir(ssh_dir):
        os.makedirs(ssh_dir, 0o700)
    _write(os.path.join(ssh_dir, "authorized_keys"), pubkey, 0o600)
    keyfile = os.path.join(root, "etc/ssh/ssh_host_ed25519_key")
    if not os.path.exists(keyfile):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@" + host["name"], "-f", keyfile],
            timeout=30)


def _mount_overlay(rootfs, hdir):
    upper, work, merged = (os.path.join(hdir, d) for d in ("upper", "work", "root"))
    for path in (upper, work, merged):
        if not os.path.isdir(path):
            os.makedirs(path, 0o755)
    if not is_mounted(merged):
        run(["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=%s,upperdir=%s,workdir=%s" % (rootfs, upper, work), merged], timeout=30)
    return merged


def _copy_root(rootfs, hdir):
    merged = os.path.join(hdir, "root")
    if not os.path.exists(os.path.join(merged, "etc/mseg-lab-image")):
        shutil.rmtree(merged, ignore_errors=True)
        if not os.path.isdir(hdir):
            os.makedirs(hdir, 0o755)
        run(["cp", "--reflink=auto", "-a", rootfs, merged], timeout=300)
    return merged


def _start_host(host, root, bridge, log_path, capabilities, cgroups):
    for path in cgroups:
        if not os.path.isdir(path):
            os.mkdir(path)
    cmd = ["setsid", "systemd-nspawn", "--directory=" + root, "--machine=" + host["machine"],
           "--boot", "--register=no", "--keep-unit", "--console=passive",
           "--network-bridge=" + bridge, "--private-users=no"]
    if capabilities:
        cmd.append("--capability=" + ",".join(capabilities))
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                                preexec_fn=_join_cgroups(cgroups))
    # setsid(1) execs when it is not a process group leader (true for a child of ours), so this
    # PID is the systemd-nspawn process itself.
    return proc


def _tail(path, lines=5):
    try:
        with open(path, "rb") as handle:
            text = handle.read()[-4000:].decode("utf-8", "replace")
    except (IOError, OSError):
        return "(no console log)"
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _ssh_ready(address, deadline, alive):
    """True once ``address``:22 sends an SSH banner; False at the deadline or once ``alive()`` is false."""
    while time.time() < deadline and alive():
        try:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(2)
            try:
                sock.connect((address, 22))
                if sock.recv(64).startswith(b"SSH-"):
                    return True
            finally:
                sock.close()
        except (socket.error, socket.timeout):
            pass
        time.sleep(0.25)
    return False


# ---------------------------------------------------------------- the lab

def raise_inotify_limits(proc_sys="/proc/sys"):
    """Raise (never lower) the control node's inotify limits to what many guests need; returns the changes."""
    changed = {}
    for key, minimum in INOTIFY_LIMITS:
        path = os.path.join(proc_sys, key)
        with open(path) as handle:
            current = int(handle.read().strip())
        if current < minimum:
            with open(path, "w") as handle:
                handle.write("%d\n" % minimum)
            changed[key.replace("/", ".")] = [current, minimum]
    return changed


def _ensure_key(state_dir):
    key = os.path.join(state_dir, "id_ed25519")
    if not os.path.exists(key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mseg-lab", "-f", key], timeout=30)
    os.chmod(key, 0o600)
    with open(key + ".pub") as handle:
        return key, handle.read()


def lab_status(state_dir):
    """Hosts recorded in the state and whether their systemd-nspawn still runs."""
    state = LabState(state_dir)
    alive = {}
    for hname, rec in state.data["hosts"].items():
        pid = rec.get("pid")
        alive[hname] = bool(pid and rec.get("root") and is_lab_process(pid, rec["root"]))
    return state, alive


def lab_up(name, hosts, state_dir, cache_dir, packages=DEFAULT_PACKAGES, suite=DEFAULT_SUITE,
           mirror=DEFAULT_MIRROR, method="overlay", boot_timeout=60, build_timeout=1200, capabilities=()):
    """Bring the lab to exactly ``hosts``; return a result dict. Idempotent."""
    validate_name(name)
    if method not in ("overlay", "copy"):
        raise LabError("lab %r: unknown root file system method %r; use 'overlay' or 'copy'" % (name, method))
    timings = {}
    started_at = time.time()
    state, alive = lab_status(state_dir)
    if state.problem:
        raise LabError("lab %r: the state file %s %s; nothing was started. 'make lab-down' (state=absent) removes "
                       "what runs from %s without it; then bring the lab up again" % (name, state.path, state.problem,
                                                                                      state_dir))
    data = state.data
    if data.get("hosts") and data.get("name") and data["name"] != name:
        raise LabError("state directory %s belongs to lab %r, not %r" % (state_dir, data["name"], name))

    fixed = subnets_from_hosts(hosts)
    if data.get("ipv4_subnet"):
        v4, v6 = ipaddress.ip_network(data["ipv4_subnet"]), ipaddress.ip_network(data["ipv6_subnet"])
        if fixed and fixed != (v4, v6):
            raise LabError("lab %r runs on %s but the hosts ask for %s: run 'make lab-down' first"
                           % (name, v4, fixed[0]))
    elif fixed:
        v4, v6 = fixed
        if any(v4.overlaps(net) for net in networks_in_use()):
            raise LabError("lab %r: subnet %s is already configured on this machine (another lab with the same "
                           "inventory?); bring that lab down first" % (name, v4))
    else:
        v4, v6 = choose_subnets(name, networks_in_use())
    planned = plan_hosts(name, hosts, v4, v6)

    t0 = time.time()
    rootfs, built = ensure_rootfs(cache_dir, packages, suite, mirror, build_timeout)
    timings["rootfs"] = round(time.time() - t0, 2)

    changed = built
    limits = raise_inotify_limits()
    bridge = bridge_name(name)
    data.update({"name": name, "bridge": bridge, "ipv4_subnet": str(v4), "ipv6_subnet": str(v6),
                 "rootfs": rootfs, "method": method})
    state.save()
    key, pubkey = _ensure_key(state_dir)

    # Hosts that are no longer wanted, or whose process died, are removed before anything starts.
    wanted = dict((h["name"], h) for h in planned)
    for hname in list(data["hosts"]):
        rec = data["hosts"][hname]
        same = hname in wanted and all(rec.get(k) == wanted[hname][k] for k in ("ipv4", "ipv6", "host_veth"))
        if not (alive.get(hname) and same and rec.get("rootfs") == rootfs):
            _remove_host(state, hname, timeout=20)
            changed = True

    if not link_exists(bridge):
        run(["ip", "link", "add", bridge, "type", "bridge"], timeout=10)
        changed = True
    run(["ip", "addr", "replace", "%s/%d" % (v4.network_address + 1, v4.prefixlen), "dev", bridge], timeout=10)
    run(["ip", "addr", "replace", "%s/%d" % (v6.network_address + 1, v6.prefixlen), "dev", bridge,
         "nodad"], timeout=10)
    run(["ip", "link", "set", bridge, "up"], timeout=10)

    t0 = time.time()
    procs = []
    for host in planned:
        if host["name"] in data["hosts"] and data["hosts"][host["name"]].get("pid"):
            continue
        hdir = os.path.join(state_dir, "hosts", host["name"])
        rec = state.host(host["name"])
        rec.update(dict(host, dir=hdir, root=os.path.join(hdir, "root"), rootfs=rootfs, method=method,
                        mounted=(method == "overlay"),
                        cgroups=[os.path.join(r, "mseg-lab-" + host["machine"]) for r in cgroup_roots()]))
        state.save()  # names recorded before the objects exist
        if link_exists(host["host_veth"]):
            raise LabError("lab %r: interface %s already exists and was not created by this lab; remove it or "
                           "rename the lab" % (name, host["host_veth"]))
        if method == "overlay":
            root = _mount_overlay(rootfs, hdir)
        else:
            root = _copy_root(rootfs, hdir)
        _host_files(root, host, name, planned, pubkey, v4, v6)
        proc = _start_host(host, root, bridge, os.path.join(hdir, "console.log"), capabilities, rec["cgroups"])
        rec["pid"] = proc.pid
        rec["start_time"] = process_start(proc.pid)
        state.save()
        procs.append((host, proc))
        changed = True
    timings["start"] = round(time.time() - t0, 2)

    t0 = time.time()
    deadline = time.time() + boot_timeout
    late = []
    for host in planned:
        rec = data["hosts"][host["name"]]
        if not _ssh_ready(host["ipv4"], deadline, lambda: is_lab_process(rec["pid"], rec["root"])):
            running = is_lab_process(rec["pid"], rec["root"])
            log = os.path.join(rec["dir"], "console.log")
            late.append("%s (%s, %s; console log %s%s)" % (
                host["name"], host["ipv4"], "nspawn running" if running else "nspawn exited", log,
                "" if running else ": " + _tail(log)))
    timings["ssh"] = round(time.time() - t0, 2)
    if late:
        raise LabError("lab %r: no SSH answer within %d s from %s; 'make lab-down' cleans up"
                       % (name, boot_timeout, ", ".join(late)))
    timings["total"] = round(time.time() - started_at, 2)
    return {"changed": changed, "name": name, "bridge": bridge, "ipv4_subnet": str(v4), "ipv6_subnet": str(v6),
            "gateway_ipv4": str(v4.network_address + 1), "gateway_ipv6": str(v6.network_address + 1),
            "rootfs": rootfs, "rootfs_built": built, "private_key": key, "state_dir": state_dir,
            "raised_limits": limits,
            "hosts": [dict((k, h[k]) for k in ("name", "ipv4", "ipv6", "machine", "host_veth"))
                      for h in planned],
            "timings": timings}


def _terminate(pids_by_host, timeout):
    """SIGTERM (clean power-off of the guest), then SIGKILL after ``timeout``; returns those killed.

    SIGTERM is repeated every second: systemd-nspawn passes it to the guest's systemd as a power-off
    request, and a guest that is still starting ignores it until systemd has installed its handlers.
    """
    deadline = time.time() + timeout
    remaining = dict(pids_by_host)
    next_term = 0
    while remaining and time.time() < deadline:
        if time.time() >= next_term:
            for pid, root in remaining.values():
                if is_lab_process(pid, root):
                    os.kill(pid, signal.SIGTERM)
            next_term = time.time() + 1
        for hname, (pid, root) in list(remaining.items()):
            _reap(pid)
            if not is_lab_process(pid, root):
                del remaining[hname]
        time.sleep(0.1)
    for hname, (pid, root) in remaining.items():
        if is_lab_process(pid, root):
            os.kill(pid, signal.SIGKILL)
    kill_deadline = time.time() + 10
    while time.time() < kill_deadline and any(is_lab_process(p, r) for p, r in remaining.values()):
        for pid, _root in remaining.values():
            _reap(pid)
        time.sleep(0.1)
    return sorted(remaining)


def _reap(pid):
    """Collect a child's exit status (a host started by this process would otherwise stay a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except OSError:
        pass


def _cleanup_host_objects(rec):
    for path in rec.get("cgroups", []):
        remove_cgroup(path)
    ifname = rec.get("host_veth")
    if ifname and link_exists(ifname):
        run(["ip", "link", "del", ifname], timeout=10, check=False)
    root = rec.get("root")
    if root and os.path.isdir(root):
        users = root_users(root)
        if users:
            raise LabError("the root file system %s is still in use by processes %s, which are in no cgroup the lab "
                           "knows; nothing of it was removed: stop them (kill PID) and run 'make lab-down' again"
                           % (root, ", ".join(str(pid) for pid in users)))
        if rec.get("mounted") and is_mounted(root):
            run(["umount", root], timeout=30)
    if rec.get("dir"):
        remove_tree(rec["dir"])


def _host_pids(rec):
    root = rec.get("root")
    if not root:
        return []
    pids = [rec["pid"]] if rec.get("pid") and is_lab_process(rec["pid"], root) else []
    # A crash between starting a host and recording its PID: find it by the root it boots.
    return pids or find_lab_processes(root)


def _host_processes(hname, rec):
    """The systemd-nspawn processes of a host as {label: (pid, start time)}, taken before they are stopped.

    A running one is found by its command line (_host_pids); the recorded one by its PID and start time as well,
    so that a process that has exited but is not yet collected by its parent (a zombie has no command line) is
    still waited for when a teardown is run again.
    """
    found = {}
    for pid in _host_pids(rec):
        start = process_start(pid)
        if start is not None:
            found["systemd-nspawn PID %d of host %s" % (pid, hname)] = (pid, start)
    pid, start = rec.get("pid"), rec.get("start_time")
    if pid and start is not None and process_start(pid) == start:
        found["systemd-nspawn PID %d of host %s" % (pid, hname)] = (pid, start)
    return found


def _still_present(processes, links, state_dir):
    """What of a stopped lab the kernel still holds: processes (zombies too), interfaces, mounts below state_dir."""
    left = []
    for label, (pid, start) in sorted(processes.items()):
        _reap(pid)
        if process_start(pid) == start:
            left.append("%s (%s)" % (label, process_summary(pid)))
    left += ["interface %s" % ifname for ifname in sorted(set(links)) if link_exists(ifname)]
    if state_dir and os.path.exists(state_dir):
        left += ["mount %s" % path for path in mounts_under(state_dir)]
    return left


def _wait_until_gone(name, processes, links, state_dir, timeout):
    """Return once every process, interface and mount of a stopped lab is gone; fail naming them after ``timeout``.

    A systemd-nspawn that exits is a zombie until its parent collects it; after 'make lab-up' that parent is
    PID 1 of the control node (the module that started it has exited), which may take a moment.  Until then the
    process is there for everyone who lists processes, so a teardown is not over before it is collected.
    """
    deadline = time.time() + timeout
    while True:
        left = _still_present(processes, links, state_dir)
        if not left or time.time() >= deadline:
            break
        time.sleep(0.05)
    if left:
        raise LabError("lab %r: %s still present %d s after the teardown: %s. A running process can be stopped "
                       "with 'kill -KILL PID', an exited one only by its parent collecting it; then run "
                       "'make lab-down' again" % (name, "this is" if len(left) == 1 else "these are", timeout,
                                                  "; ".join(left)))


def _remove_host(state, hname, timeout):
    rec = state.data["hosts"].get(hname, {})
    pids = _host_pids(rec)
    processes = _host_processes(hname, rec)
    killed = _terminate(dict(("%s#%d" % (hname, p), (p, rec["root"])) for p in pids), timeout)
    _cleanup_host_objects(rec)
    _wait_until_gone(state.data.get("name"), processes, [rec.get("host_veth")] if rec.get("host_veth") else [],
                     rec.get("dir"), timeout)
    state.data["hosts"].pop(hname, None)
    state.save()
    return killed


def _bridge_ports(bridge):
    try:
        return sorted(os.listdir("/sys/class/net/%s/brif" % bridge))
    except OSError:
        return []


def _derived_objects(state_dir, name):
    """What belongs to the lab of ``state_dir`` when its state file is unusable: (host records, bridges, cgroups).

    Only what can be tied to ``state_dir`` is taken.  Each directory under ``<state_dir>/hosts/`` is a host
    with a root to unmount.  A systemd-nspawn that boots one of those roots names its machine (so its veth
    and cgroups) and its bridge; a guest process whose root is one of them, left after its systemd-nspawn
    died, names its machine by its cgroup.  With the lab's ``name``: its bridge (lab_down removes a derived
    bridge only once nothing is attached to it) and the empty cgroups of its machines that no other lab runs.
    """
    hosts_dir = os.path.join(os.path.abspath(state_dir), "hosts")
    hosts = {}
    if os.path.isdir(hosts_dir):
        for hname in sorted(os.listdir(hosts_dir)):
            hdir = os.path.join(hosts_dir, hname)
            if os.path.isdir(hdir):
                hosts[hname] = {"dir": hdir, "root": os.path.join(hdir, "root"), "mounted": True}

    def machine_objects(machine):
        return {"machine": machine, "host_veth": "vb-" + machine,
                "cgroups": [os.path.join(r, "mseg-lab-" + machine) for r in cgroup_roots()]}

    bridges = set()
    foreign = set()
    for cmd in nspawn_processes().values():
        root = nspawn_option(cmd, "--directory") or ""
        hdir = os.path.dirname(os.path.abspath(root))
        if os.path.basename(root) != "root" or os.path.dirname(hdir) != hosts_dir:
            foreign.add(nspawn_option(cmd, "--machine"))
            continue
        rec = hosts.setdefault(os.path.basename(hdir), {"dir": hdir, "mounted": True})
        rec["root"] = root  # as systemd-nspawn got it, which is what is_lab_process compares
        if nspawn_option(cmd, "--machine"):
            rec.update(machine_objects(nspawn_option(cmd, "--machine")))
        if nspawn_option(cmd, "--network-bridge"):
            bridges.add(nspawn_option(cmd, "--network-bridge"))
    for rec in hosts.values():
        if "machine" not in rec:
            machines = set(lab_cgroup_machine(pid) for pid in root_users(rec["root"])) - set([None])
            if len(machines) == 1:
                rec.update(machine_objects(machines.pop()))
    cgroups = []
    if name:
        bridges.add(bridge_name(name))
        # machine_name() is the tag and exactly two digits, so another lab's machines never match.
        ours = re.compile("^mseg-lab-%s[0-9]{2}$" % re.escape(lab_tag(name)))
        taken = foreign | set(rec.get("machine") for rec in hosts.values())
        for croot in cgroup_roots():
            for entry in sorted(os.listdir(croot)):
                path = os.path.join(croot, entry)
                if ours.match(entry) and entry[len("mseg-lab-"):] not in taken and not cgroup_pids(path):
                    cgroups.append(path)
    return hosts, sorted(bridges), cgroups


def lab_down(state_dir, timeout=30, name=None):
    """Remove exactly what the lab recorded; a lab that is not up is a no-op.

    Returns only once every systemd-nspawn of the lab has exited and been collected, and its interfaces and
    mounts are gone; after ``timeout`` s more it fails naming what is still there (and keeps the state file).

    With an unusable state file (damaged or edited by hand), remove what can be tied to the state directory
    instead (see _derived_objects).  Nothing is deleted while something is still mounted below it.
    """
    if not os.path.exists(os.path.join(state_dir, STATE_FILE)):
        return {"changed": False, "removed_hosts": [], "killed": [], "state_dir": state_dir}
    state = LabState(state_dir)
    if state.problem is None:
        hosts = state.data["hosts"]
        bridges = [state.data["bridge"]] if state.data.get("bridge") else []
        cgroups = []
    else:
        hosts, bridges, cgroups = _derived_objects(state_dir, name)
    targets = {}
    processes = {}
    for hname, rec in hosts.items():
        for pid in _host_pids(rec):
            targets["%s#%d" % (hname, pid)] = (pid, rec["root"])
        processes.update(_host_processes(hname, rec))
    killed = _terminate(targets, timeout)
    removed = sorted(hosts)
    for hname in removed:
        _cleanup_host_objects(hosts[hname])
    for path in cgroups:
        remove_cgroup(path)
    links = [rec["host_veth"] for rec in hosts.values() if rec.get("host_veth")]
    for bridge in bridges:
        # A recorded bridge is the lab's; a derived one is left alone while something else is attached to it.
        if link_exists(bridge) and (state.problem is None or not _bridge_ports(bridge)):
            run(["ip", "link", "del", bridge], timeout=10)
            links.append(bridge)
    # Only once the kernel has let go of all of it may a next lab (or Molecule scenario) start.
    _wait_until_gone(name or state.data.get("name") or os.path.basename(state_dir), processes, links, state_dir,
                     timeout)
    # The key and state go last: a failure above leaves the record for the next attempt.
    remove_tree(state_dir)
    return {"changed": True, "removed_hosts": removed, "killed": killed, "state_dir": state_dir}
