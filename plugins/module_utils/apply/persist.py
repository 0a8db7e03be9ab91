# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the apply engine keeps its files on the host, and the boot restore that reloads the persisted ruleset.

The restore script and its systemd unit are files beside this module (``templates/``), filled in with
``str.format``. The ``nft_apply`` action plugin reads them on the controller and hands them to the module (AnsiballZ
carries only Python); code running from the files themselves (the agent, the tests) reads them with
``restore_templates()``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import read_text, sha256_text, unlink, write_atomic

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
SCRIPT_TEMPLATE = "mseg-restore.sh"
UNIT_TEMPLATE = "mseg-restore.service"


class Paths:
    """The engine's files under ``state_dir`` (names from the wire contract) and the boot unit under ``unit_dir``."""

    def __init__(self, state_dir=contract.STATE_DIR, unit_dir=contract.UNIT_DIR):
        self.dir = state_dir
        self.ruleset = os.path.join(state_dir, contract.RULESET_FILE)
        self.ruleset_json = os.path.join(state_dir, contract.RULESET_JSON_FILE)
        self.prev = os.path.join(state_dir, contract.PREVIOUS_FILE)
        self.live = os.path.join(state_dir, contract.LIVE_FILE)
        self.state = os.path.join(state_dir, contract.STATE_FILE)
        self.script = os.path.join(state_dir, contract.RESTORE_SCRIPT_FILE)
        self.lock = os.path.join(state_dir, contract.LOCK_FILE)
        self.txn = os.path.join(state_dir, contract.TXN_DIR)
        self.unit_dir = unit_dir
        self.unit = os.path.join(unit_dir, contract.RESTORE_UNIT) if unit_dir else None
        self.wants = os.path.join(unit_dir, "sysinit.target.wants", contract.RESTORE_UNIT) if unit_dir else None


def restore_templates():
    """``{"script": text, "unit": text}`` read from ``templates/`` (for callers that run from the files)."""
    found = {}
    for key, name in (("script", SCRIPT_TEMPLATE), ("unit", UNIT_TEMPLATE)):
        text = read_text(os.path.join(TEMPLATE_DIR, name))
        if text is None:
            raise ApplyError("the boot restore template %s is missing: reinstall the mseg.fleet collection" % name)
        found[key] = text
    return found


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
    return "%s%s\n%s" % (contract.HASH_HEADER, sha256_text(transaction), transaction)


def persisted_ok(paths, transaction, document, document_sha=None):
    """Whether both persisted files hold ``transaction`` and its judged JSON form: ``document``, or, given
    ``document_sha`` instead, the document of that sha256 (the JSON file's header names it, and its body has it)."""
    if read_text(paths.ruleset) != persisted_text(transaction):
        return False
    stored = read_text(paths.ruleset_json)
    if document is not None:
        return stored == persisted_text(document)
    header = "%s%s\n" % (contract.HASH_HEADER, document_sha)
    return stored is not None and stored.startswith(header) and sha256_text(stored[len(header):]) == document_sha


def load_state(paths):
    text = read_text(paths.state)
    if not text:
        return {}
    try:
        state = json.loads(text)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _ssh_ports(peers):
    ports = sorted({port for _addr, port in peers} | {22})
    return ", ".join(str(port) for port in ports)


def restore_script(paths, peers, nft_path, templates):
    """The boot restore script for ``paths``: it loads ``paths.ruleset_json`` after checking its sha256 header and
    ``nft -j -c``, else the fail-closed table that lets in only SSH on the management ports of ``peers``.

    The agent runs the same script (``/bin/sh -c``) when its stored bundle cannot be restored at boot."""
    return templates["script"].format(
        unit=contract.RESTORE_UNIT, ruleset=paths.ruleset_json, nft=nft_path, header=contract.HASH_HEADER,
        ssh_ports=_ssh_ports(peers), table=contract.TABLE, failsafe=contract.FAILSAFE_MARKER)


def persist(paths, transaction, peers, nft_path, templates, document):
    """Write the persisted ruleset, the restore script and the enabled boot unit. Returns True if anything changed.

    ``document`` is the judged JSON form of ``transaction`` (``Nft.judge``): the boot restore loads only that
    (``nft -j -f``), from a root-only file it verifies by its sha256, so no text is parsed at boot. ``templates`` is
    what ``restore_templates()`` returns (the module receives it from its action plugin).
    """
    changed = False
    wanted = {
        paths.ruleset: persisted_text(transaction),
        paths.ruleset_json: persisted_text(document),
        paths.script: restore_script(paths, peers, nft_path, templates),
    }
    for path, text in wanted.items():
        if read_text(path) != text:
            write_atomic(path, text)
            changed = True
    if paths.unit:
        unit_text = templates["unit"].format(script=paths.script, table=contract.TABLE)
        try:
            os.makedirs(os.path.dirname(paths.wants), exist_ok=True)
            if read_text(paths.unit) != unit_text:
                write_atomic(paths.unit, unit_text, 0o644)
                changed = True
            if os.path.realpath(paths.wants) != os.path.realpath(paths.unit):
                unlink(paths.wants)
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
    for path in (paths.ruleset, paths.ruleset_json, paths.script, paths.wants, paths.unit):
        if path and unlink(path):
            removed = True
    if removed and paths.unit and os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)
    return removed
