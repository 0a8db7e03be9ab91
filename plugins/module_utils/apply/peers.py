# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Management peers: the controller's SSH address as this host sees it, and the transaction that keeps it reachable.

Every apply adds the address Ansible connects from (or the agent's configured peers) to the table's management
sets, so no policy can lock the operator out (DESIGN section 3, ``mseg_management_auto``). The sets hold this run's
peers only: elements an earlier run added (they come back in a backup listing) are dropped, so an address Ansible
once connected from does not stay a management peer forever.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time

from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform

PREAMBLE = "table %s {}\ndelete table %s\n" % (contract.TABLE, contract.TABLE)
# The per-connection sshd process: ``sshd`` up to OpenSSH 9.7, ``sshd-session`` (exec'd by the listener) from 9.8.
SSHD_NAMES = ("sshd", "sshd-session")
PROC = "/proc"
_AUTO = "(?:%s)" % "|".join(re.escape(name) for name in sorted(contract.MGMT_AUTO_SET.values()))
# ``elements = { ... }`` inside an auto set's declaration (a listing), and ``add element`` lines for one.
# (``set`` first, its word boundary checked behind it: a pattern that opens with a literal is searched for that
# literal, which keeps a 100,000-element ruleset's scan in milliseconds)
_AUTO_ELEMENTS_RE = re.compile(r"(set(?<=\bset)\s+%s\s*\{[^{}]*?)\s*\belements\s*=\s*\{[^{}]*\}" % _AUTO)
_AUTO_ADD_RE = re.compile(r"^\s*add\s+element\s+%s\s+%s\s*\{[^{}]*\}\s*;?\s*\n?"
                          % (re.escape(contract.TABLE), _AUTO), re.M)
_ADD_ELEMENT_RE = re.compile(r"add\s+element")  # what every _AUTO_ADD_RE match holds, searched for as a literal


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


def _environ_of(pid, proc=PROC):
    try:
        with open("%s/%d/environ" % (proc, pid), "rb") as handle:
            raw = handle.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def _parent_of(pid, proc=PROC):
    try:
        with open("%s/%d/stat" % (proc, pid)) as handle:
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


def _comm(pid, proc=PROC):
    try:
        with open("%s/%d/comm" % (proc, pid)) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def boottime():
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def ssh_connection_started(pid=None, proc=PROC):
    """Boot-clock second at which sshd accepted the connection this process runs over, or None (not SSH).

    The per-connection process is the ``sshd``/``sshd-session`` ancestor whose parent is the listening sshd (the
    topmost one); it is forked right after ``accept()``, so a connection whose process started after the new
    ruleset went live was opened through that ruleset. OpenSSH 9.8 renamed it ``sshd-session``: both are
    recognised, or the freshness proof would silently be off.
    """
    pid = os.getpid() if pid is None else pid
    chain = []
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        chain.append(pid)
        pid = _parent_of(pid, proc)
    sshd = [p for p in chain if _comm(p, proc) in SSHD_NAMES]
    if len(sshd) < 2:
        return None
    try:
        with open("%s/%d/stat" % (proc, sshd[-2])) as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return ticks / float(os.sysconf("SC_CLK_TCK"))


def management_elements(peers):
    """``add element`` lines for the auto-management sets, one per (address, port)."""
    lines = []
    for address, port in sorted(set(peers)):
        version = ipaddress.ip_address(address).version
        lines.append("add element %s %s { %s . %d }"
                     % (contract.TABLE, contract.MGMT_AUTO_SET[version], address, port))
    return lines


def without_auto_elements(content):
    """``content`` with the elements of the auto management sets removed (those an earlier apply added)."""
    content = _AUTO_ELEMENTS_RE.sub(r"\1", content)
    return _AUTO_ADD_RE.sub("", content) if _ADD_ELEMENT_RE.search(content) else content  # else: no line scan


def _undeclared(name, address):
    return ApplyError(
        "content does not declare set %s, so the controller's SSH address %s cannot be added as a management "
        "entry: render the ruleset with mseg.fleet (every mode declares it) or set management_auto: false"
        % (name, address))


def build_document(content, peers):
    """A ruleset in the JSON form (``jsonform.is_document``) with this run's management elements as the only
    elements of the auto management sets, serialised deterministically (the same content and peers give the same
    text, so its sha256 names the transaction; content that needs no change comes back as it is). It stays a
    document: ``Nft.judge`` judges it as one."""
    try:
        objects = jsonform.document_objects(content)
    except jsonform.ScopeError as exc:
        raise ApplyError(str(exc))
    auto = {name: [] for name in contract.MGMT_AUTO_SET.values()}
    for address, port in sorted(set(peers)):
        parsed = ipaddress.ip_address(address)
        auto[contract.MGMT_AUTO_SET[parsed.version]].append({"concat": [str(parsed), port]})
    declared = set()
    changed = False
    for item in objects:
        body = item.get("set") if isinstance(item, dict) else None
        if isinstance(body, dict) and body.get("name") in auto and body.get("table") == contract.TABLE_NAME:
            declared.add(body["name"])
            changed = changed or body.pop("elem", None) is not None or bool(auto[body["name"]])
            if auto[body["name"]]:
                body["elem"] = auto[body["name"]]
    for address, _port in peers:
        name = contract.MGMT_AUTO_SET[ipaddress.ip_address(address).version]
        if name not in declared:
            raise _undeclared(name, address)
    if not changed:
        return content  # nothing to add or drop: the content as it came (serialising 100,000 elements costs 25 ms)
    return json.dumps({"nftables": objects}, separators=(",", ":")) + "\n"  # in the content's own order


def build_transaction(content, peers):
    """The complete, atomic ``nft -f`` text: preamble, the content without earlier auto elements, then this run's
    management elements (auto-detected peers are replaced each run, never accumulated). Content in the JSON form
    stays a document (``build_document``)."""
    if jsonform.is_document(content):
        return build_document(content, peers)
    content = without_auto_elements(content)
    for address, _port in peers:
        name = contract.MGMT_AUTO_SET[ipaddress.ip_address(address).version]
        if not re.search(r"\bset\s+%s\b" % name, content):
            raise _undeclared(name, address)
    body = content if content.endswith("\n") else content + "\n"
    extra = "".join(line + "\n" for line in management_elements(peers))
    return PREAMBLE + body + extra
