# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side of the nftables contract: apply one rendered ruleset to table ``inet mseg``.

Plain Python (no Ansible imports): the ``nft_apply`` module wraps it and the per-host agent
reuses it. Guarantees (DESIGN section 5):

* scope: the content is read into its JSON form (the renderer's text without nft, ``nft/textform.py``; any other
  text by nft in a scratch namespace), that form is judged object by object against the wire contract's
  allowlist, and only that JSON is ever loaded (``nft/jsonform.py``): anything but table ``inet mseg`` is refused
  before the host's ruleset is touched;
* atomic: one ``nft -j -f`` transaction replaces the table, all or nothing in the kernel (a refused load leaves
  the live ruleset byte-identical, so the apply path runs no separate ``nft -c``; check mode, which loads nothing,
  asks ``nft -j -c``);
* idempotent: the sha256 of the desired transaction, of its judged JSON document and of the live table listed
  without counters (``nft -s``) are recorded; a run is unchanged when they still match. The kernel's ruleset
  generation id (netlink ``NFT_MSG_GETGEN``) and the network namespace's cookie are recorded too, so an unchanged
  run on an unchanged kernel ruleset neither parses the content nor lists the table, and an apply whose load was
  the only commit (generation id + 1) records the document it loaded instead of listing 100,000 elements;
* persistent: the applied transaction lives in ``<state_dir>/ruleset.nft`` and its judged JSON form in
  ``ruleset.json`` (0600, first line carries its own sha256); ``mseg-restore.service`` loads the JSON form at boot
  (``nft -j -f``, no text parsed). A file that fails its checksum or ``nft -j -c`` is not loaded: a fail-closed
  table that keeps the management ports open is loaded instead (``templates/mseg-restore.sh``);
* serialised: one ``flock`` per state directory;
* reversible: ``state: previous`` restores the backup of the table the last apply replaced, and only while the live
  table is still the one that apply recorded (never over a newer policy or a hand edit);
* commit-confirmed (``confirmed.py``): ``arm`` forks a detached worker that applies, then restores the previous
  table unless ``confirm`` renames its ``armed`` marker in time.

State directory layout: ``ruleset.nft`` (persisted transaction), ``ruleset.prev.nft`` (the table
that was live before the last apply, loadable), ``live.nft`` (recorded listing, once one was taken), ``state.json``
(the hashes of the desired transaction, of its judged document, of the live listing and of the backup that apply
kept, the generation id and namespace cookie), ``restore.sh`` (boot restore),
``lock``, ``txn/<token>/`` (commit-confirmed transactions).
"""

from __future__ import absolute_import, division, print_function

from __future__ import annotations

import json
import os
import shutil
import time

from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import PREAMBLE, build_transaction
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import (
    Paths, load_state, persist, persisted_ok, prepare_state_dir, restore_templates, unpersist,
)
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import FileLock, read_text, sha256_text, unlink, write_atomic
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform, runner
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft, count_listing, namespace_identity

STATES = ("present", "absent", "previous")


def lock(paths, timeout, table_lock=contract.TABLE_LOCK):
    """The host-wide lock of the table (``contract.TABLE_LOCK``, shared with the agent and every other writer),
    then the apply lock of ``paths``: two writers of the table never interleave, whatever their state_dir."""
    return _Locks([_file_lock(path, timeout) for path in (table_lock, paths.lock) if path])


def _file_lock(path, timeout):
    return FileLock(path, timeout, lambda holder: ApplyError(
        "another mseg apply holds %s (%s) for more than %ss: wait for it to finish or raise lock_timeout; nothing "
        "was changed" % (path, holder, timeout)))


class _Locks:
    """Several ``FileLock`` taken in order and released in reverse (a context manager, or acquire/release)."""

    def __init__(self, locks):
        self.locks = locks

    def acquire(self):
        held = []
        try:
            for item in self.locks:
                directory = os.path.dirname(item.path)
                if not os.path.isdir(directory):
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                held.append(item.acquire())
        except BaseException:
            for item in reversed(held):
                item.release()
            raise
        return self

    def release(self):
        for item in reversed(self.locks):
            item.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def agent_owner(state_dir):
    """The agent's configuration when the agent owns table ``inet mseg`` on this host (else None): nft_apply must not
    write the table behind it, or the agent and a playbook undo each other (an emergency bypass included)."""
    path = os.path.join(state_dir, contract.AGENT_CONFIG_FILE)
    return path if os.path.exists(path) else None


def refuse_on_agent_host(state_dir):
    """Raise ApplyError, changing nothing, when the agent owns the table (``agent_owner``)."""
    owner = agent_owner(state_dir)
    if owner:
        raise ApplyError(
            "table %s on this host is owned by %s (%s exists): a playbook must not write it behind the agent. "
            "Publish the policy for the agent (mseg.fleet.publish), or use the host CLI through mseg.fleet.host_cli "
            "('%s mode bypass|observe|enforce|clear', as mseg.fleet.bypass does on agent hosts); nothing was changed"
            % (contract.TABLE, contract.AGENT_COMMAND, owner, contract.HOST_CLI))


class Request:
    """What to apply. ``content`` is the rendered ruleset; ``peers`` the management (address, port) pairs.

    ``state``: ``present`` applies ``content``; ``absent`` removes the table; ``previous`` restores the backup
    (``ruleset.prev.nft``) of the table the last apply replaced.
    """

    def __init__(self, content="", state="present", persist=True, peers=(), state_dir=contract.STATE_DIR,
                 unit_dir=contract.UNIT_DIR, lock_timeout=300, check_mode=False, want_diff=False, templates=None,
                 table_lock=contract.TABLE_LOCK):
        if state not in STATES:
            raise ApplyError("state must be one of %s, got %r" % (", ".join(STATES), state))
        if state == "previous" and content:
            raise ApplyError("content is not used with state: previous, which restores the backup %s: remove it"
                             % contract.PREVIOUS_FILE)
        self.content = content or ""
        self.state = state
        self.persist = persist
        self.peers = [(str(a), int(p)) for a, p in peers]
        self.paths = Paths(state_dir, unit_dir)
        self.lock_timeout = lock_timeout
        self.check_mode = check_mode
        self.want_diff = want_diff
        self.templates = templates
        self.table_lock = table_lock  # the host-wide lock of the table (None only in tests that fake the kernel)


class Engine:
    def __init__(self, request, nft=None):
        self.req = request
        self.paths = request.paths
        self.nft = nft
        self.transaction = None
        self.desired_sha = None
        self.backup_sha = None  # the sha256 of the backup the state records: kept by this apply, or restored

    # -- planning -----------------------------------------------------------------

    def prepare(self):
        """Checks that need no lock: scope, nft present, kernel support. Builds the transaction.

        ``state: previous`` builds it from the backup later, under the lock (``evaluate``).
        """
        if self.req.state == "present":
            if not self.req.content.strip():
                raise ApplyError("content is empty: pass the rendered ruleset (state: present needs it)")
            self.transaction = build_transaction(self.req.content, self.req.peers)
        elif self.req.state == "absent":
            self.transaction = PREAMBLE
        if self.transaction is not None:
            self.desired_sha = sha256_text(self.transaction)
        if self.nft is None:
            self.nft = Nft()
        self.nft.probe()

    def judged(self):
        """The judged JSON form of the transaction (``Nft.judge``), asked only when something needs it: a load,
        check mode, a persisted copy to write. An unchanged run does not parse the content again: the recorded
        state names the transaction (sha256) that was judged before it was loaded."""
        return self.nft.judge(self.transaction, require_table=self.wants_table())

    def wants_table(self):
        """Whether the transaction leaves a table (present, or a backup that held one)."""
        return self.transaction is not None and self.transaction != PREAMBLE

    def evaluate(self):
        """Compare desired with live. Returns dict: in_sync, drift, before (listing or None), recorded state.

        When the kernel's generation id and the network namespace (its cookie, never reused while the kernel
        runs) are those recorded after the last apply, no table has changed since (every committed transaction
        bumps the id), so the recorded listing is the live one and listing 100,000 elements again is skipped.
        An apply whose own load was the only commit records no listing at all (``record``): the live table is the
        judged document it loaded. Until a later run lists it, that run compares the table's JSON listing with
        the recorded document instead (``Nft.live_document``), and records the listing once they match.

        ``state: previous`` reads the backup here (under the lock) and raises ApplyError, changing nothing, unless
        the restore is safe (``_previous_refusal``).
        """
        state = load_state(self.paths)
        backup = self._plan_previous() if self.req.state == "previous" else None
        genid = runner.ruleset_genid()
        recorded = read_text(self.paths.live)
        identity = namespace_identity()
        same_kernel = (genid is not None and identity is not None and state.get("genid") == genid
                       and state.get("identity") == identity)
        loaded = "live_sha256" not in state and bool(state.get("document_sha256"))  # recorded without a listing
        untouched = same_kernel and "live_sha256" in state and state["live_sha256"] == (
            None if recorded is None else sha256_text(recorded))
        if same_kernel and loaded and self.req.state == "present" and not self.req.want_diff \
                and state.get("desired_sha256") == self.desired_sha:
            return {"in_sync": True, "drift": False, "before": None, "state": state, "listed": False,
                    "genid": genid}
        before = recorded if untouched else self.nft.listing()
        resolved = False
        if loaded and before is not None and (same_kernel or sha256_text(
                self.nft.live_document() or "") == state["document_sha256"]):
            recorded, resolved = before, True  # the live table is the document the last apply loaded
            state = dict(state, live_sha256=sha256_text(before))
        elif loaded:
            recorded = ""  # no listing nft prints: the live table is not (or no longer) the one last loaded
            state = dict(state, live_sha256=sha256_text(recorded))
        if self.req.state == "absent":
            in_sync = before is None
            drift = False
        elif self.req.state == "previous":
            in_sync = before == recorded and state.get("desired_sha256") == self.desired_sha
            drift = False
            if not in_sync:
                refusal = self._previous_refusal(state, backup, before)
                if refusal:
                    raise ApplyError(refusal + "; nothing was changed")
        else:
            same_live = before is not None and recorded is not None and before == recorded
            in_sync = same_live and state.get("desired_sha256") == self.desired_sha
            drift = (before != recorded) and state.get("desired_sha256") is not None
        # ``resolved``: record the listing now, once the generation id moved (until then the id answers without it)
        return {"in_sync": in_sync, "drift": drift, "before": before, "state": state, "listed": not untouched,
                "genid": genid, "resolved": resolved and not same_kernel}

    def _plan_previous(self):
        """Build the transaction that restores the backup; returns the backup's text."""
        backup = read_text(self.paths.prev)
        if backup is None:
            raise ApplyError("there is no backup %s to restore: no apply with this state_dir has replaced a table "
                             "yet; nothing was changed" % self.paths.prev)
        if not backup.startswith(PREAMBLE):
            raise ApplyError("the backup %s was not written by nft_apply (it does not open with '%s'): restore "
                             "by applying the policy you want (state: present); nothing was changed"
                             % (self.paths.prev, PREAMBLE.splitlines()[0]))
        body = backup[len(PREAMBLE):]
        if body.strip():
            self.transaction = build_transaction(body, self.req.peers)
            self.nft.judge(self.transaction, require_table=True)
        else:
            self.transaction = PREAMBLE
        self.desired_sha = sha256_text(self.transaction)
        self.backup_sha = sha256_text(backup)
        return backup

    def _previous_refusal(self, state, backup, before):
        """Why restoring ``backup`` over the live table ``before`` is unsafe, or None when it is safe.

        Safe only while the live table is the one the last apply put there (its listing's sha256, recorded after
        every apply) and the backup is the one that apply kept: never over a newer policy or a hand edit.
        """
        if "live_sha256" not in state:
            return ("no apply is recorded in %s, so nothing says which table %s replaced: restore by applying the "
                    "policy you want (state: present)" % (self.paths.state, contract.PREVIOUS_FILE))
        if state.get("previous_sha256") != self.backup_sha:
            return ("the backup %s is not the one the last apply kept (it was edited, or written by an older "
                    "mseg.fleet): restoring it could bring back a table nobody applied; restore by applying the "
                    "policy you want (state: present)" % self.paths.prev)
        if (None if before is None else sha256_text(before)) != state["live_sha256"]:
            return ("the live table %s is not the one the last apply put there (%s since: a hand edit, another tool, "
                    "or an apply with another state_dir), so it is not the table that replaced the backup %s and "
                    "restoring would overwrite a newer one; look at it with 'nft list table %s', then apply the "
                    "policy you want (state: present)"
                    % (contract.TABLE, "removed" if before is None else "changed", self.paths.prev, contract.TABLE))
        return None

    def predict_after(self):
        """The listing the transaction would produce, from a scratch network namespace when possible."""
        if not self.wants_table():
            return ""
        unshare = shutil.which("unshare") or shutil.which("unshare", path="/usr/bin:/bin")
        if unshare:
            document = jsonform.is_document(self.transaction)  # nft reads a JSON document only with -j
            script = "%s %s-f - && %s -s list table %s" % (self.nft.path, "-j " if document else "", self.nft.path,
                                                           contract.TABLE)
            proc = self.nft.runner([unshare, "--net", "sh", "-c", script],
                                   input=self.judged() if document else self.transaction,
                                   capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                return proc.stdout
        return self.transaction

    # -- doing --------------------------------------------------------------------

    @staticmethod
    def backup_text(before):
        """The table that is live now as a loadable transaction (absent table -> delete-only)."""
        return PREAMBLE + (before or "")

    def keep_backup(self, text):
        """Write the backup of the replaced table (after the load: a failed load leaves the last one in place).

        ``state: previous`` keeps the backup it restored, so restoring twice changes nothing the second time.
        """
        if self.req.state != "previous":
            write_atomic(self.paths.prev, text)
            self.backup_sha = sha256_text(text)

    def record(self, genid_before=None):
        """After a load: record generation id, listing and hashes. Returns (listing, counts).

        ``genid_before``: the generation id read under the lock before the load. When the id after it is exactly
        one more (the load was the only commit since) in the same namespace, the live table is the judged document
        that was loaded, and listing 100,000 elements only to record them is skipped: the state records the
        document's sha256 instead (``evaluate`` lists later, when it needs to). ``--diff`` lists anyway (it shows
        the table as nft lists it).
        """
        genid = runner.ruleset_genid()
        identity = namespace_identity()
        document = self.judged() if self.wants_table() else None
        proven = (document is not None and not self.req.want_diff and genid_before is not None
                  and genid is not None and identity is not None and genid == genid_before + 1)
        state = {"desired_sha256": self.desired_sha if self.req.state != "absent" else None,
                 "document_sha256": None if document is None else sha256_text(document),
                 "previous_sha256": self.backup_sha,
                 "genid": genid, "identity": identity,
                 "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "peers": self.req.peers}
        if proven:
            listing = None
            counts = {key: value for key, value in self.nft.counts(self.transaction).items() if key != "tables"}
            unlink(self.paths.live)
        else:
            listing = self.nft.listing()
            counts = count_listing(listing)
            if listing is None:
                unlink(self.paths.live)
            else:
                write_atomic(self.paths.live, listing)
            state["live_sha256"] = None if listing is None else sha256_text(listing)
        state["counts"] = counts
        write_atomic(self.paths.state, json.dumps(state, indent=1, sort_keys=True) + "\n")
        return listing, counts

    def persists_table(self):
        return self.req.persist and self.wants_table()

    def finish_persist(self):
        if self.persists_table():
            templates = self.req.templates or restore_templates()  # the module gets them from its action plugin
            return persist(self.paths, self.transaction, self.req.peers, self.nft.path, templates, self.judged())
        return unpersist(self.paths)

    def persist_in_sync(self, state=None):
        """Whether the persisted copy and boot unit are what this transaction needs. The JSON copy is checked
        against the judged document's sha256 the state recorded for this very transaction when there is one (no
        parse of the content), else against the document judged now."""
        if self.persists_table():
            state = load_state(self.paths) if state is None else state
            known = state.get("document_sha256") if state.get("desired_sha256") == self.desired_sha else None
            document = None if known else self.judged()
            return persisted_ok(self.paths, self.transaction, document, known) and (
                not self.paths.unit or (os.path.exists(self.paths.unit) and os.path.lexists(self.paths.wants)))
        return not any(os.path.lexists(p) for p in (self.paths.ruleset, self.paths.ruleset_json, self.paths.unit,
                                                    self.paths.wants) if p)

    def result(self, changed, before, after, counts, drift, msg):
        res = {"changed": changed, "sha256": self.desired_sha if self.wants_table() else None,
               "rules": counts["rules"], "sets": counts["sets"], "elements": counts["elements"],
               "rolled_back": False, "drift": drift, "msg": msg,
               "management_peers": ["%s . %d" % p for p in self.req.peers],
               "backup": self.paths.prev,
               "persisted": self.paths.ruleset if self.persists_table() else None}
        if self.req.want_diff and before is not None and after is not None:
            res["diff"] = {"before": before, "after": after,
                           "before_header": "live table inet mseg", "after_header": "desired table inet mseg"}
        return res

    def done_msg(self, drift=False, would=False):
        """What a load did (or, in check mode, would do), in one sentence."""
        if self.req.state == "previous":
            verb = ("would restore", "restored") if self.wants_table() else ("would remove", "removed")
            return "%s table inet mseg from the backup %s" % (verb[0] if would else verb[1], self.paths.prev)
        verb = ("replace", "replaced") if self.req.state == "present" else ("remove", "removed")
        if would:
            return "would %s table inet mseg%s" % (verb[0], " (live table drifted)" if drift else "")
        return "%s table inet mseg%s" % (verb[1], " (corrected drift)" if drift else "")

    def run(self):
        """Synchronous apply (no commit-confirmed). Returns the result dict; raises ApplyError."""
        self.prepare()
        if self.req.check_mode:
            return self._run_locked()
        prepare_state_dir(self.paths)
        with lock(self.paths, self.req.lock_timeout, self.req.table_lock):
            return self._run_locked()

    def _run_locked(self):
        ev = self.evaluate()
        persist_ok = self.persist_in_sync(ev["state"])
        if ev["in_sync"]:
            counts = ev["state"].get("counts") or count_listing(ev["before"])
            changed = not persist_ok
            if changed and not self.req.check_mode:
                self.finish_persist()
            if ev.get("resolved") and not self.req.check_mode:
                write_atomic(self.paths.live, ev["before"])  # the listing the last apply did not take
            if (ev.get("resolved") or ev.get("listed") and ev.get("genid") is not None
                    and ev["state"].get("genid") != ev["genid"]) and not self.req.check_mode:
                ev["state"].update(genid=ev["genid"], identity=namespace_identity())
                write_atomic(self.paths.state, json.dumps(ev["state"], indent=1, sort_keys=True) + "\n")
            already = "already is the backup %s" % self.paths.prev if self.req.state == "previous" \
                else "already matches"
            msg = "table inet mseg %s%s" % (already, "; persisted copy repaired" if changed else "")
            return self.result(changed, ev["before"], ev["before"], counts, False, msg)
        self.judged()  # refused content fails here, before anything is written
        if self.req.check_mode:
            if self.wants_table():
                self.nft.check(self.transaction)  # nothing is loaded in check mode: the kernel's answer is asked
            after = self.predict_after() if self.req.want_diff else None
            counts = count_listing(after if after and after != self.transaction else ev["before"])
            return self.result(True, ev["before"] or "", after, counts, ev["drift"], self.done_msg(ev["drift"], True))
        # No separate nft -c: the load is one transaction the kernel commits whole or not at all, so a ruleset it
        # refuses leaves the live ruleset byte-identical (tests/integration/test_apply_state.py).
        backup = self.backup_text(ev["before"])
        self.nft.load(self.transaction)
        self.keep_backup(backup)
        after, counts = self.record(ev["genid"])
        self.finish_persist()
        return self.result(True, ev["before"] or "", after or "", counts, ev["drift"], self.done_msg(ev["drift"]))


def last_applied(paths, listing, nft=None):
    """Whether ``listing`` (the live table, ``Nft.listing``) is the table the last apply under ``paths`` put there.

    The recorded listing answers when there is one. An apply that recorded none (its load was the only commit,
    ``Engine.record``) is still the live table while the generation id has not moved in this namespace, or when
    the live table's JSON form is the document it loaded (``Nft.live_document``)."""
    recorded = read_text(paths.live)
    state = load_state(paths)
    if listing is None:
        return "live_sha256" in state and state["live_sha256"] is None  # the last apply removed the table
    if recorded is not None or "live_sha256" in state or not state.get("document_sha256"):
        return listing == recorded
    identity = namespace_identity()
    if identity is not None and state.get("identity") == identity and state.get("genid") is not None \
            and state.get("genid") == runner.ruleset_genid():
        return True
    try:
        return sha256_text((nft or Nft()).live_document() or "") == state["document_sha256"]
    except MsegError:
        return False


def apply(request, nft=None):
    """Apply ``request`` now (no commit-confirmed). Returns the result dict; raises ApplyError."""
    return Engine(request, nft).run()
