# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one ``nft`` runner: check, load and list table ``inet mseg``, list its counters, read the generation id.

Everything that runs ``nft`` on a host goes through ``Nft`` (the apply engine, the agent, its trace, the counter
readers); ``check`` and ``load`` take a text but load only its judged JSON form (``jsonform``; the renderer's own
text is read into it by ``textform``, any other text by nft in a scratch namespace). ``runner`` is replaceable, and
``tests/unit/nft/fake.py`` is the fake the unit tests use.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform, textform


class NftError(MsegError):
    """nft is missing, the kernel cannot run it, or it refused a ruleset; the message says what to do."""


def find_nft():
    """Path of the nft binary, or NftError."""
    path = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin:/usr/local/sbin")
    if not path:
        raise NftError("nft is not installed on this host: install the nftables package "
                       "(the mseg.fleet.kernel_prereqs role does); nothing was changed")
    return path


# (netns prefix, nft path, inode, mtime, runner) -> whether textform writes that release's listing (``Nft``).
_RELEASES = {}
_KERNEL_HINTS = ("Operation not supported", "Protocol not supported", "Address family not supported",
                 "cache initialization failed")


class Nft:
    """Thin wrapper around the nft binary.

    ``runner`` (``subprocess.run``'s signature) is replaceable: unit tests pass the fake of ``tests/unit/nft``.
    ``netns`` runs every command inside that named network namespace (``ip netns exec``), as the agent's trace does.
    ``translate``: read a text in the renderer's grammar without nft (``textform``) when this nft's release lists
    what that module writes; False: nft always parses a text in a scratch namespace.
    """

    def __init__(self, path=None, runner=None, netns=None, translate=True):
        self.path = path or find_nft()
        self.runner = runner or subprocess.run
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.translate = translate
        self._judged = {}
        self._protocols = None

    def _run(self, args, text=None):
        proc = self.runner(self.prefix + [self.path] + args, input=text, capture_output=True, text=True,
                           check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def probe(self):
        """Fail clearly when the kernel has no nf_tables (the netlink query is cheap; nft explains failures)."""
        if not self.prefix and ruleset_genid() is not None:
            return
        rc, _out, err = self._run(["list", "tables"])
        if rc != 0:
            if any(hint in err for hint in _KERNEL_HINTS):
                raise NftError("the kernel has no usable nf_tables support (%s): use a kernel with "
                               "CONFIG_NF_TABLES and CONFIG_NF_TABLES_INET (>= 4.18); nothing was changed"
                               % err.strip().splitlines()[-1])
            raise NftError("nft cannot read the ruleset: %s; nothing was changed" % err.strip())

    def judge(self, text, require_table=False):
        """The JSON transaction ``text`` stands for, judged by ``jsonform`` (NftError when the contract refuses it).

        Every text this runner loads or checks goes through here and only its judged JSON form reaches the host's
        ruleset (``jsonform``). A text in the renderer's grammar is read into the objects nft would list for it
        (``textform``); any other text nft reads in a scratch namespace. A text already in the JSON form
        (``jsonform.is_document``) is read strictly and judged as it is. The same contract judges all three.
        ``require_table``: the text must leave table inet mseg (not only remove it).
        """
        if text not in self._judged:
            try:
                if jsonform.is_document(text):
                    objects = jsonform.check(jsonform.document_objects(text), require_table=False, scratch=False)
                else:
                    translated = self._translated(text)
                    if translated is not None:
                        objects = jsonform.check(translated, require_table=False, scratch=False)
                    else:
                        objects = jsonform.check(jsonform.parse(text, self.path, self.runner), require_table=False)
                self._judged = {text: (jsonform.transaction(objects), jsonform.counts(objects))}
            except jsonform.ScopeError as exc:
                raise NftError(str(exc))
            except RecursionError:  # a JSON document Python could read but not judge or write back at its depth
                raise NftError("the ruleset nests deeper than mseg.fleet judges: pass the ruleset rendered by "
                               "mseg.fleet; nothing was changed")
        document, counts = self._judged[text]
        if require_table and not counts["tables"]:
            raise NftError("the ruleset does not define table %s: pass the ruleset rendered by mseg.fleet; nothing "
                           "was changed" % contract.TABLE)
        return document

    def _translated(self, text):
        """``textform``'s objects for ``text``, or None: not asked to, an nft release whose listing that module
        does not write (asked once), or a text outside the renderer's grammar."""
        if not self.translate:
            return None
        if self._protocols is None:
            self._protocols = (textform.protocol_names() or {}) if self._listed_release() else False
        if self._protocols is False:
            return None
        return textform.objects(text, self._protocols)

    def _listed_release(self):
        """Whether this nft's release is one whose listing ``textform`` writes: ``nft --version`` asked once per
        binary (its inode and modification time: an upgrade asks again) and runner, so the agent asks once."""
        try:
            stat = os.stat(self.path)
            key = (tuple(self.prefix), self.path, stat.st_ino, stat.st_mtime_ns, self.runner)
        except OSError:
            key = None
        if key is None or key not in _RELEASES:
            rc, out, _err = self._run(["--version"])
            listed = rc == 0 and textform.nft_release(out) in textform.LISTED_BY
            if key is None:
                return listed
            if len(_RELEASES) >= 64:  # a caller with a runner per call (a trace): keep the cache bounded
                _RELEASES.clear()
            _RELEASES[key] = listed
        return _RELEASES[key]

    def counts(self, text):
        """Counts of the judged form of ``text`` (``jsonform.counts``: tables, rules, sets, elements)."""
        self.judge(text)
        return dict(self._judged[text][1])

    def live_document(self):
        """The JSON transaction that would load the live table inet mseg again (``jsonform.transaction`` of its JSON
        listing), or None when it does not exist. A table loaded from a judged document lists back into that very
        document, so comparing the two tells whether the live table is still the one that was loaded."""
        rc, out, err = self._run(["-j", "list", "table", contract.TABLE_FAMILY, contract.TABLE_NAME])
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError("nft cannot list table %s: %s" % (contract.TABLE, err.strip()))
        try:
            items = [item for item in json.loads(out)["nftables"] if list(item) != ["metainfo"]]
            return jsonform.transaction(items)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return ""  # a form this code does not know: never equal to a document it loaded

    def check(self, text, what="ruleset"):
        document = self.judge(text)
        rc, _out, err = self._run(["-j", "-c", "-f", "-"], document)
        if rc != 0:
            raise NftError("nft rejected the %s (nft -c -f): %s; nothing was changed"
                           % (what, _clip(err.strip().replace("/dev/stdin", "content"))))

    def load(self, text):
        document = self.judge(text)
        rc, _out, err = self._run(["-j", "-f", "-"], document)
        if rc != 0:
            raise NftError("nft failed to load the ruleset (the kernel kept the previous one): %s"
                           % _clip(err.strip().replace("/dev/stdin", "content")))

    def listing(self):
        """Table inet mseg listed without counters and without the kernel's own elements of dynamic sets, or None
        when it does not exist (``stable_listing``)."""
        rc, out, err = self._run(["-s", "list", "table", contract.TABLE_FAMILY, contract.TABLE_NAME])
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError("nft cannot list table %s: %s" % (contract.TABLE, err.strip()))
        return stable_listing(out)

    def counters(self):
        """The named counters of table inet mseg, sorted: ``[(name, packets, bytes)]``; ``None`` when the table
        does not exist. Raises NftError when nft cannot list them (e.g. without CAP_NET_ADMIN)."""
        rc, out, err = self._run(["-j", "list", "counters", "table", contract.TABLE_FAMILY, contract.TABLE_NAME])
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError("nft cannot list the counters of table %s: %s" % (contract.TABLE,
                                                                             (err or out).strip()))
        try:
            items = json.loads(out or "{}").get("nftables", [])
        except (ValueError, AttributeError):
            raise NftError("nft listed the counters of table %s in a form it does not document" % contract.TABLE)
        found = []
        for item in items:
            counter = item.get("counter") if isinstance(item, dict) else None
            if isinstance(counter, dict) and isinstance(counter.get("name"), str):
                found.append((counter["name"], int(counter.get("packets", 0)), int(counter.get("bytes", 0))))
        return sorted(found)


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


# SO_NETNS_COOKIE (Linux 5.14, asm-generic/socket.h); Python 3.11's socket module does not name it.
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)


def namespace_identity():
    """The network namespace's cookie, as a string, or None when the kernel cannot tell it.

    A recorded generation id is only meaningful in the namespace that recorded it. The cookie is a 64-bit number the
    kernel gives each namespace once and never hands out again while it runs, so a fresh namespace (a recreated
    container or lab host) never carries the recorded one's; its inode is reused and its generation id restarts
    (issue 16). Without a cookie (kernels before 5.14) there is no identity, and nothing recorded is trusted.
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        cookie, = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))
    except (OSError, struct.error):
        return None
    finally:
        sock.close()
    return "netns-cookie:%d" % cookie


def stable_listing(listing):
    """``listing`` without the elements of dynamic sets: the kernel adds and removes them from the packet path (a
    connection limit's per-source counts), so they are state, like counters, not configuration. Kept, they would
    make every open connection look like drift, and a replayed listing would reload them as static elements."""
    kept = []
    dynamic = skipping = False
    for line in listing.splitlines(True):
        stripped = line.strip()
        if skipping:
            skipping = not stripped.endswith("}")
            continue
        if stripped.startswith(("set ", "map ")) and stripped.endswith("{"):
            dynamic = False
        elif stripped.startswith("flags ") and "dynamic" in stripped[len("flags "):].replace(" ", "").split(","):
            dynamic = True
        elif dynamic and stripped.startswith("elements = {"):
            skipping = not stripped.endswith("}")
            continue
        elif stripped == "}":
            dynamic = False
        kept.append(line)
    return "".join(kept)


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
