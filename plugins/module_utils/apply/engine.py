# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
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
  checksum or ``nft -c`` is not loaded: a fail-closed table is loaded instead (``templates/mseg-restore.sh``);
* serialised: one ``flock`` per state directory;
* commit-confirmed (``confirmed.py``): ``arm`` forks a detached worker that applies, then restores the previous
  table unless ``confirm`` renames its ``armed`` marker in time.

State directory layout: ``ruleset.nft`` (persisted transaction), ``ruleset.prev.nft`` (the table
that was live before the last apply, loadable), ``live.nft`` (recorded listing), ``state.json``,
``restore.sh`` (boot restore), ``lock``, ``txn/<token>/`` (commit-confirmed transactions).
"""

from __future__ import absolute_import, division, print_function

from __future__ import annotations

import json
import os
import shutil
import threading
import time

from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import PREAMBLE, build_transaction
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import (
    Paths, load_state, persist, persisted_ok, prepare_state_dir, restore_templates, unpersist,
)
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import FileLock, read_text, sha256_text, unlink, write_atomic
from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft, count_listing, namespace_identity
from ansible_collections.mseg.fleet.plugins.module_utils.nft.scope import check_scope

STATES = ("present", "absent")


def lock(paths, timeout):
    """The apply lock of ``paths``: two applies on one host never interleave."""
    return FileLock(paths.lock, timeout, lambda holder: ApplyError(
        "another mseg apply holds %s (%s) for more than %ss: wait for it to finish or raise lock_timeout; nothing "
        "was changed" % (paths.lock, holder, timeout)))


class Request:
    """What to apply. ``content`` is the rendered ruleset; ``peers`` the management (address, port) pairs."""

    def __init__(self, content="", state="present", persist=True, peers=(), state_dir=contract.STATE_DIR,
                 unit_dir=contract.UNIT_DIR, lock_timeout=300, check_mode=False, want_diff=False, templates=None):
        if state not in STATES:
            raise ApplyError("state must be one of %s, got %r" % (", ".join(STATES), state))
        self.content = content or ""
        self.state = state
        self.persist = persist
        self.peers = [(str(a), int(p)) for a, p in peers]
        self.paths = Paths(state_dir, unit_dir)
        self.lock_timeout = lock_timeout
        self.check_mode = check_mode
        self.want_diff = want_diff
        self.templates = templates


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
        self.desired_sha = sha256_text(self.transaction)
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
        genid = runner.ruleset_genid()
        recorded = read_text(self.paths.live)
        untouched = (genid is not None and state.get("genid") == genid and state.get("identity") == namespace_identity()
                     and "live_sha256" in state
                     and state["live_sha256"] == (None if recorded is None else sha256_text(recorded)))
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
            script = "%s -f - && %s -s list table %s" % (self.nft.path, self.nft.path, contract.TABLE)
            proc = self.nft.runner([unshare, "--net", "sh", "-c", script], input=self.transaction,
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
        genid = runner.ruleset_genid()
        listing = self.nft.listing()
        counts = count_listing(listing)
        if listing is None:
            unlink(self.paths.live)
        else:
            write_atomic(self.paths.live, listing)
        state = {"desired_sha256": self.desired_sha if self.req.state == "present" else None,
                 "live_sha256": None if listing is None else sha256_text(listing),
                 "genid": genid, "identity": namespace_identity(), "counts": counts,
                 "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "peers": self.req.peers}
        write_atomic(self.paths.state, json.dumps(state, indent=1, sort_keys=True) + "\n")
        return listing, counts

    def finish_persist(self):
        if self.req.state == "present" and self.req.persist:
            templates = self.req.templates or restore_templates()  # the module gets them from its action plugin
            return persist(self.paths, self.transaction, self.req.peers, self.nft.path, templates)
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
        with lock(self.paths, self.req.lock_timeout):
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
                ev["state"].update(genid=ev["genid"], identity=namespace_identity())
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
