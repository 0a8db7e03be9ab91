# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Kernel facts for mseg.fleet: what a host's kernel can enforce.

Plain Python, no Ansible imports. Everything is read from ``/proc`` and ``/sys`` under configurable roots, so
tests can point the reader at a fixture tree; the only commands run are ``nft`` (version, and a check-only
transaction that proves nf_tables answers) and ``bpftool`` (version), and only where they are installed.
A facility that is missing is reported as missing; gathering never fails because of it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import os
import re
import socket
import struct

try:
    import fcntl
except ImportError:  # pragma: no cover - every Linux Python has fcntl
    fcntl = None

MIN_KERNEL = (4, 18)

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
)

# A check-only transaction: nft sends it to the kernel, which validates it and discards it.
NFT_PROBE = "add table inet mseg_probe\n"

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
_NFT_VERSION_RE = re.compile(r"nftables v(\d+(?:\.\d+)*)")
_BPFTOOL_VERSION_RE = re.compile(r"v(\d+(?:\.\d+)*)")

# ethtool ioctl interface (include/uapi/linux/ethtool.h, include/uapi/linux/sockios.h)
_SIOCETHTOOL = 0x8946
_ETHTOOL_GSTRINGS = 0x1B
_ETHTOOL_GSSET_INFO = 0x37
_ETHTOOL_GFEATURES = 0x3A
_ETH_SS_FEATURES = 4
_ETH_GSTRING_LEN = 32
_IFNAMSIZ = 16


def _read(path):
    """Return the stripped text of ``path``, or None when it cannot be read."""
    try:
        with open(path, "r") as handle:
            return handle.read().strip()
    except (IOError, OSError, UnicodeDecodeError):
        return None


def _read_int(path):
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def parse_version(release):
    """Return ``(major, minor, patch)`` from a kernel release string such as ``4.18.0-513.el8.x86_64``."""
    match = _VERSION_RE.match(release or "")
    if not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


def _cpu_items(value, strict):
    if isinstance(value, bool) or not isinstance(value, (int, str, list, tuple)) and (strict or value is not None):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _cpu_items(item, strict)
    else:
        for word in (value or "").replace(",", " ").split():
            try:
                first, sep, last = word.partition("-")
                low = int(first)
                high = int(last) if sep else low
                if high < low:
                    raise ValueError(word)
            except ValueError:
                if strict:
                    raise
                continue
            yield from range(low, high + 1)


def parse_cpu_list(value, strict=False):
    """Expand a CPU list into sorted, distinct CPU numbers.

    ``value`` is the format of ``/sys/devices/system/cpu/online`` and of systemd's ``CPUAffinity=`` (``0-3,8
    10-11``: ranges with ``-``, items separated by commas or spaces), an integer, or a list of those. What the
    kernel wrote is read leniently (an unreadable item is skipped); with ``strict`` (what an operator wrote) any
    item that is not a CPU number or range raises ``ValueError``.
    """
    return sorted(set(_cpu_items(value, strict)))


def _hex_flags(text):
    try:
        return int(text, 16)
    except ValueError:
        return 0


def default_route_interfaces(proc_root):
    """Return ``{'ipv4': name or None, 'ipv6': name or None}`` from the kernel routing tables."""
    result = {"ipv4": None, "ipv6": None}
    route = _read(os.path.join(proc_root, "net", "route"))
    for line in (route or "").splitlines()[1:]:
        fields = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; flag 0x1 is RTF_UP
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000" and _hex_flags(fields[3]) & 1:
            result["ipv4"] = fields[0]
            break
    route6 = _read(os.path.join(proc_root, "net", "ipv6_route"))
    for line in (route6 or "").splitlines():
        fields = line.split()
        # dest dest_len src src_len next_hop metric refcnt use flags iface; ::/0 via a gateway, not lo
        if (len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00"
                and fields[9] != "lo" and _hex_flags(fields[8]) & 1):
            result["ipv6"] = fields[9]
            break
    return result


def _sysctl(proc_root, name):
    return _read(os.path.join(proc_root, "sys", *name.split(".")))


def br_netfilter_state(proc_root, modules_root, release):
    """Describe br_netfilter: ``active`` (its sysctls exist) and ``module`` (loaded/builtin/available/missing).

    ``available`` means the running kernel ships it as a loadable module (``modules.dep``); ``missing`` means
    nothing here could load it (no module for this kernel, or a container without the host's modules).
    """
    active = os.path.isdir(os.path.join(proc_root, "sys", "net", "bridge"))
    modules = _read(os.path.join(proc_root, "modules"))
    if modules is not None and any(line.split(" ", 1)[0] == "br_netfilter" for line in modules.splitlines()):
        module = "loaded"
    else:
        kernel_dir = os.path.join(modules_root, release or "")
        builtin = _read(os.path.join(kernel_dir, "modules.builtin")) or ""
        dep = _read(os.path.join(kernel_dir, "modules.dep")) or ""
        if active or re.search(r"(^|/)br_netfilter\.ko\b", builtin, re.M):
            # active without being listed as a loaded module: compiled into the kernel
            module = "builtin"
        elif re.search(r"(^|/)br_netfilter\.ko(\.\w+)?:", dep, re.M):
            module = "available"
        else:
            module = "missing"
    return {"active": active, "module": module}


def bpf_state(proc_root):
    """The bpf() syscall and its JIT, from the sysctls that exist only when the kernel has them.

    ``jit`` is ``enabled``, ``enabled_debug`` or ``disabled`` (``net.core.bpf_jit_enable``), ``unavailable`` (the
    kernel has no JIT) or ``unknown`` (not visible from this network namespace, or an unexpected value).
    """
    unprivileged = _read_int(os.path.join(proc_root, "sys", "kernel", "unprivileged_bpf_disabled"))
    jit_enable = _read_int(os.path.join(proc_root, "sys", "net", "core", "bpf_jit_enable"))
    jit_harden = _read_int(os.path.join(proc_root, "sys", "net", "core", "bpf_jit_harden"))
    if jit_enable is None:
        # The JIT sysctls exist only in the initial network namespace, like netdev_max_backlog: without that marker
        # (a container with its own network namespace) the JIT cannot be seen from here.
        initial_netns = os.path.exists(os.path.join(proc_root, "sys", "net", "core", "netdev_max_backlog"))
        jit = "unavailable" if initial_netns else "unknown"
    else:
        jit = {0: "disabled", 1: "enabled", 2: "enabled_debug"}.get(jit_enable, "unknown")
    return {
        "syscall": unprivileged is not None,
        "unprivileged_disabled": unprivileged,
        "jit": jit,
        "jit_enable": jit_enable,
        "jit_harden": jit_harden,
    }


def _ethtool(sock, name, payload):
    """Run one SIOCETHTOOL request on interface ``name``; return ``payload`` as the kernel filled it in."""
    buf = array.array("B", bytes(payload))
    address = buf.buffer_info()[0]
    ifreq = struct.pack("%dsP" % _IFNAMSIZ, name.encode("ascii")[:_IFNAMSIZ - 1], address)
    ifreq += b"\0" * (40 - len(ifreq))
    fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    return buf.tobytes()


def interface_features(name):
    """Return ``{feature: active}`` for a network interface of the running kernel, or None if unreadable.

    This asks the kernel directly (the ethtool ioctl, the same data as ``ethtool -k``), so it works in
    containers without the ethtool package; it needs no privilege.
    """
    if fcntl is None:
        return None
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except (IOError, OSError):
        return None
    try:
        info = _ethtool(sock, name, struct.pack("IIQI", _ETHTOOL_GSSET_INFO, 0, 1 << _ETH_SS_FEATURES, 0))
        count = struct.unpack_from("I", info, 16)[0]
        if not count:
            return None
        strings = _ethtool(sock, name, struct.pack("III", _ETHTOOL_GSTRINGS, _ETH_SS_FEATURES, count)
                           + b"\0" * (count * _ETH_GSTRING_LEN))
        blocks = (count + 31) // 32
        features = _ethtool(sock, name, struct.pack("II", _ETHTOOL_GFEATURES, blocks) + b"\0" * (16 * blocks))
    except (IOError, OSError, ValueError, UnicodeEncodeError):
        return None
    finally:
        sock.close()
    result = {}
    for index in range(count):
        raw = strings[12 + index * _ETH_GSTRING_LEN:12 + (index + 1) * _ETH_GSTRING_LEN]
        feature = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        if not feature:
            continue
        active = struct.unpack_from("I", features, 8 + (index // 32) * 16 + 8)[0]
        result[feature] = bool(active & (1 << (index % 32)))
    return result


def interfaces(sys_root, features_reader=interface_features):
    """Per network interface: MTU, driver, SR-IOV capability and offload features."""
    base = os.path.join(sys_root, "class", "net")
    try:
        names = sorted(os.listdir(base))
    except (IOError, OSError):
        return {}
    result = {}
    for name in names:
        path = os.path.join(base, name)
        if not os.path.isdir(path):
            continue
        try:
            driver = os.path.basename(os.readlink(os.path.join(path, "device", "driver")))
        except (IOError, OSError):
            driver = None
        totalvfs = _read_int(os.path.join(path, "device", "sriov_totalvfs"))
        numvfs = _read_int(os.path.join(path, "device", "sriov_numvfs"))
        result[name] = {
            "mtu": _read_int(os.path.join(path, "mtu")),
            "driver": driver,
            "virtual": not os.path.exists(os.path.join(path, "device")),
            "operstate": _read(os.path.join(path, "operstate")),
            "sriov": {
                "supported": totalvfs is not None,
                "totalvfs": totalvfs,
                "numvfs": numvfs,
            },
            "features": features_reader(name),
        }
    return result


def nftables_state(run, nft_binary):
    """Whether nft is installed and nf_tables accepts a (check-only) transaction.

    ``run(argv, stdin)`` returns ``(rc, stdout, stderr)``; ``nft_binary`` is the resolved path or None.
    """
    state = {"binary": nft_binary, "version": None, "works": False, "error": None}
    if not nft_binary:
        state["error"] = "the nft command is not installed"
        return state
    rc, out, err = run([nft_binary, "--version"], None)
    match = _NFT_VERSION_RE.search(out or "")
    if rc == 0 and match:
        state["version"] = match.group(1)
    rc, out, err = run([nft_binary, "--check", "-f", "-"], NFT_PROBE)
    if rc == 0:
        state["works"] = True
    else:
        message = (err or out or "").strip().splitlines()
        state["error"] = "nft --check failed (rc=%d): %s" % (rc, message[0] if message else "no output")
    return state


def bpftool_state(run, bpftool_binary):
    state = {"binary": bpftool_binary, "version": None}
    if bpftool_binary:
        rc, out, err = run([bpftool_binary, "version"], None)
        match = _BPFTOOL_VERSION_RE.search(out or "")
        if rc == 0 and match:
            state["version"] = match.group(1)
    return state


def gather(run, nft_binary, bpftool_binary, proc_root="/proc", sys_root="/sys", modules_root="/lib/modules",
           features_reader=interface_features):
    """Gather every kernel fact mseg.fleet needs, as one JSON-friendly dict (``ansible_facts.mseg_kernel``)."""
    release = _read(os.path.join(proc_root, "sys", "kernel", "osrelease"))
    version = parse_version(release)
    btf_path = os.path.join(sys_root, "kernel", "btf", "vmlinux")
    online = parse_cpu_list(_read(os.path.join(sys_root, "devices", "system", "cpu", "online")))
    bpf = bpf_state(proc_root)
    bpf["bpftool"] = bpftool_state(run, bpftool_binary)
    return {
        "release": release,
        "version": ".".join(str(part) for part in version) if version else None,
        "version_supported": bool(version and version[:2] >= MIN_KERNEL),
        "btf": {"available": os.path.isfile(btf_path), "path": btf_path},
        "nftables": nftables_state(run, nft_binary),
        "bpf": bpf,
        "br_netfilter": br_netfilter_state(proc_root, modules_root, release),
        "sysctls": dict((name, _sysctl(proc_root, name)) for name in SYSCTLS),
        "interfaces": interfaces(sys_root, features_reader),
        "default_route_interfaces": default_route_interfaces(proc_root),
        "cpus": {"online": online, "count": len(online)},
    }
