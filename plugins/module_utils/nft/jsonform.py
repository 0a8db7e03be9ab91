# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checked load: text is judged in the form nft itself parsed it into, and only what was judged is loaded.

A text ruleset is never loaded into the host's ruleset. ``parse`` has nft read it in a scratch network namespace
(a fresh, empty one, without root's file access, so an ``include`` cannot read a root-only file), beside
canary tables in every family, and lists the result in the libnftables JSON form. ``check`` judges that form
object by object against the wire contract's allowlist (``contract.check_ruleset``: table inet mseg only, the
contract's names, filter chains, allowed statements, marks and log channels); a text that removed or changed a
canary (``flush ruleset``, ``delete table ...``) is refused too. ``transaction`` builds the JSON document that is
loaded (``nft -j -f``): add and delete table inet mseg, then add each judged object. Whatever lexer tricks the text
plays (strings spanning lines, ``include`` inside a block, ``define``), what reaches the kernel is the judged JSON.
The text the renderer writes needs no scratch parse either: ``textform`` reads it into the very objects ``parse``
would return (without the canaries, so it is judged with ``scratch=False``) and refuses any other text, which
then comes here.

A ruleset that is already in the JSON form (``{"nftables": [{"table": ...}, {"set": ...}, ...]}``, the objects
``nft -j list`` prints) needs no scratch parse: ``document_objects`` reads it strictly (a duplicate key, NaN or a
nesting too deep is refused, not resolved the way Python's json would), and the same ``check`` judges its objects
(the contract then also judges what nft would not have normalised: set elements, statement fields); ``transaction``
re-serialises only what was judged, so nft reads exactly the objects that were judged.

Cost: a text: one scratch load and one JSON listing per distinct text, linear in its size. A JSON document: one
strict ``json.loads`` and one pass over its objects and set elements, linear in its size, no nft run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError


class ScopeError(MsegError):
    """The ruleset is not one the contract allows; nothing reached the host's ruleset."""


# One canary table per family: a text that flushes the ruleset (of any family) or deletes a table removes one.
CANARY_NAME = "mseg_canary"
CANARY_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
CANARIES = "".join("table %s %s {\n\tchain keep {\n\t}\n}\n" % (family, CANARY_NAME) for family in CANARY_FAMILIES)
# The scratch parse runs as nobody with CAP_NET_ADMIN only (no CAP_DAC_OVERRIDE: root-only files stay unreadable).
SANDBOX_UID = 65534
PARSE_TIMEOUT = 120
# Chains before sets and maps: a verdict map's elements jump to chains, which nft -j -f needs to exist already.
_ORDER = {"table": 0, "chain": 1, "counter": 2, "set": 2, "map": 2, "rule": 3}
_STDIN = "/dev/stdin"
_ERROR_AT_RE = re.compile(r"^(?P<file>\S+?):\d+:\d+(?:-\d+)?: Error: ")


def sandbox_argv(nft_path):
    """The argv that runs a shell script in a fresh network namespace without the caller's file access.

    As root: a new network namespace, then nobody with only CAP_NET_ADMIN (no CAP_DAC_OVERRIDE, so root-only files
    stay unreadable). As the agent's user (CAP_NET_ADMIN, no CAP_SYS_ADMIN): a new user namespace that maps that
    user to root inside it, and a network namespace it owns; files keep that user's own permissions.
    """
    unshare = shutil.which("unshare") or shutil.which("unshare", path="/usr/bin:/bin")
    setpriv = shutil.which("setpriv") or shutil.which("setpriv", path="/usr/bin:/bin")
    if not unshare or not setpriv:
        raise ScopeError("unshare and setpriv (util-linux) are needed to check a ruleset before it is loaded: "
                         "install util-linux; nothing was changed")
    if os.geteuid() != 0:
        return [unshare, "--user", "--map-root-user", "--net"]
    return [unshare, "--net", setpriv, "--reuid=%d" % SANDBOX_UID, "--regid=%d" % SANDBOX_UID, "--clear-groups",
            "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin"]


def parse_script(nft_path):
    """The scratch script: canaries, then the text (stdin), then the JSON listing."""
    return "%s -f - <<'CANARIES' || exit 3\n%sCANARIES\n%s -f /dev/stdin || exit 3\n%s -j list ruleset\n" % (
        nft_path, CANARIES, nft_path, nft_path)


def own_errors(err):
    """nft's error text, keeping only what concerns the text itself: nothing of an included file is echoed."""
    kept, keep = [], True
    hidden = False
    for line in err.splitlines():
        if line.startswith("In file included from"):
            keep, hidden = False, True
            continue
        found = _ERROR_AT_RE.match(line)
        if found:
            keep = found.group("file") == _STDIN
            hidden = hidden or not keep
        if keep:
            kept.append(line.replace(_STDIN, "content"))
    text = "\n".join(kept).strip()
    if hidden:
        text += ("\n" if text else "") + "(errors inside an included file are not shown: a ruleset includes nothing)"
    return text


def parse(text, nft_path, runner=subprocess.run):
    """The JSON objects (``nft -j list`` items) nft makes of ``text``, read in a scratch namespace; ScopeError when
    nft refuses it. The host's ruleset is not touched."""
    argv = sandbox_argv(nft_path) + ["/bin/sh", "-c", parse_script(nft_path)]
    try:
        proc = runner(argv, input=text, capture_output=True, text=True, check=False, timeout=PARSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ScopeError("nft did not finish reading the ruleset within %ds in a scratch namespace (a ruleset runs "
                         "no monitor and reads no device): pass the ruleset rendered by mseg.fleet; nothing was "
                         "changed" % PARSE_TIMEOUT)
    if proc.returncode != 0:
        raise ScopeError("nft rejected the ruleset: %s; nothing was changed"
                         % _clip(own_errors(proc.stderr or "") or "exit status %d" % proc.returncode))
    try:
        items = json.loads(proc.stdout)["nftables"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ScopeError("nft listed the scratch ruleset in a form mseg.fleet does not know; nothing was changed")
    return items


def is_document(text):
    """Whether ``text`` is a ruleset in the JSON form (judged as it is) rather than nft text (parsed first)."""
    return text.lstrip()[:1] == "{"


def _unique_keys(pairs):
    found = {}
    for key, value in pairs:
        if key in found:
            raise ValueError("the key %s appears twice in one object" % json.dumps(key))
        found[key] = value
    return found


def _no_constant(name):
    raise ValueError("%s is not a JSON number" % name)


def document_objects(text):
    """The objects of a ruleset in the JSON form, read strictly: ScopeError for anything but one object
    ``{"nftables": [objects]}`` of unique keys. Nothing else is decided here: ``check`` judges the objects."""
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ScopeError("the JSON ruleset nests deeper than Python reads: pass the ruleset rendered by mseg.fleet; "
                         "nothing was changed")
    except ValueError as exc:
        raise ScopeError("the JSON ruleset is not valid JSON: %s; pass the ruleset rendered by mseg.fleet; nothing "
                         "was changed" % exc)
    if not isinstance(document, dict) or list(document) != ["nftables"] or not isinstance(document["nftables"], list):
        raise ScopeError('the JSON ruleset is not one object {"nftables": [...]} holding the objects of table %s '
                         '(the form "nft -j list" prints): pass the ruleset rendered by mseg.fleet; nothing was '
                         'changed' % contract.TABLE)
    return document["nftables"]


def check(items, require_table=True, scratch=True):
    """Raise ScopeError unless ``items`` (from ``parse``) hold table inet mseg (or, without ``require_table``, no
    table at all: a removal), its contents, and the untouched canaries; returns the judged objects. Without
    ``scratch`` (``items`` from ``document_objects``: no scratch parse, so no canaries) a canary is judged like any
    other object: as one outside table inet mseg."""
    if not scratch:
        return _judge([item for item in items if not _is_metainfo(item)], set(), set(), require_table)
    canaries = set()
    ours = []
    for item in items:
        if isinstance(item, dict) and len(item) == 1:
            (kind, body), = item.items()
            if kind == "metainfo":
                continue
            if isinstance(body, dict) and body.get(("name" if kind == "table" else "table")) == CANARY_NAME:
                canaries.add((kind, body.get("family"), body.get("name")))
                continue
        ours.append(item)
    shape = (("table", CANARY_NAME), ("chain", "keep"))
    wanted = {(kind, family, name) for family in CANARY_FAMILIES for kind, name in shape}
    return _judge(ours, canaries, wanted, require_table)


def _is_metainfo(item):
    return isinstance(item, dict) and list(item) == ["metainfo"]


def _judge(ours, canaries, wanted, require_table):
    problems = []
    if canaries != wanted:
        problems.append("it removes or changes tables other than %s (flush ruleset, delete or flush of another "
                        "table)" % contract.TABLE)
    problems.extend(contract.check_ruleset(ours))
    if require_table and not any(list(item) == ["table"] for item in ours):
        problems.append("it does not define table %s" % contract.TABLE)
    if problems:
        raise ScopeError("the ruleset is not one mseg.fleet loads: %s; mseg.fleet never runs 'flush ruleset' and "
                         "never changes other tables: render the ruleset with mseg.fleet and keep to the wire "
                         "contract; nothing was changed" % _clip("; ".join(problems[:5])))
    return ours


def transaction(objects):
    """The JSON document that atomically replaces table inet mseg with the judged ``objects`` (empty: removes it)."""
    table = {"table": {"family": contract.TABLE_FAMILY, "name": contract.TABLE_NAME}}
    commands = [{"add": table}, {"delete": table}]
    ordered = sorted(objects, key=lambda item: _ORDER[list(item)[0]])
    for item in ordered:
        (kind, body), = item.items()
        body = {key: value for key, value in body.items() if key not in ("handle", "packets", "bytes")}
        commands.append({"add": {kind: body}})
    return json.dumps({"nftables": commands}, sort_keys=True) + "\n"


def counts(objects):
    """What the judged ``objects`` hold: tables, rules, sets (and maps), set and map elements."""
    found = {"tables": 0, "rules": 0, "sets": 0, "elements": 0}
    for item in objects:
        (kind, body), = item.items()
        if kind == "table":
            found["tables"] += 1
        elif kind == "rule":
            found["rules"] += 1
        elif kind in ("set", "map"):
            found["sets"] += 1
            elements = body.get("elem")
            found["elements"] += len(elements) if isinstance(elements, list) else 0
    return found


def checked(text, nft_path, runner=subprocess.run, require_table=True):
    """``text`` parsed, judged and turned into the JSON transaction that is the only thing loaded."""
    return transaction(check(parse(text, nft_path, runner), require_table))


def _clip(text, limit=1500):
    return text if len(text) <= limit else text[:limit] + " ..."
