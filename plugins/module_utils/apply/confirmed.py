# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Commit-confirmed apply: the host restores the previous table by itself unless the controller confirms in time.

``arm`` validates and forks a detached worker (its own session: it survives the loss of the connection) that takes
the apply lock, waits for ``<txn>/go``, applies, then waits ``confirm_timeout`` seconds for ``confirm``; without it
the worker restores the previous table. The persisted file, the backup and the recorded state are only written once
confirmed, so a rollback (or a reboot in the window) brings back the previous ruleset everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time

from ansible_collections.mseg.fleet.plugins.module_utils.apply.engine import Engine, lock
from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import boottime
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import prepare_state_dir
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import read_text, write_atomic

GO_WAIT = 120
GO_GRACE = 0.5  # after the start signal, time for its exit status to reach the controller before a cut
RESULT_WAIT = 120


def _txn_dir(paths, token):
    if not re.match(r"^[a-f0-9]{8,64}$", token or ""):
        raise ApplyError("invalid commit-confirmed transaction token %r" % (token,))
    return os.path.join(paths.txn, token)


def arm(request, token, confirm_timeout):
    """Start a commit-confirmed apply.

    Validates and evaluates synchronously; when nothing would change, returns the unchanged result.
    Otherwise forks a detached worker (own session, survives the loss of the connection) that takes
    the lock, waits for ``<txn>/go``, backs up and applies, then waits ``confirm_timeout`` seconds
    for ``confirm``; without it the worker restores the previous table. The persisted file, the backup
    and the recorded state are only written once confirmed, so a rollback (or a reboot in the window)
    brings back the previous ruleset everywhere.
    """
    engine = Engine(request)
    engine.prepare()
    prepare_state_dir(request.paths)
    with lock(request.paths, request.lock_timeout, request.table_lock):
        ev = engine.evaluate()
        if ev["in_sync"] and engine.persist_in_sync():
            res = engine._run_locked()
            res["armed"] = False
            return res
        engine.judged()
        if engine.wants_table():
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
        held = lock(request.paths, request.lock_timeout, request.table_lock).acquire()
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
            backup = engine.backup_text(before)
            engine.nft.load(engine.transaction)
            after = engine.nft.listing()
        except ApplyError as exc:
            report({"failed": True, "msg": str(exc)})
            return
        applied_at = boottime()
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
            write_atomic(os.path.join(txn, "final.json"), json.dumps(roll_back(engine, backup, after, confirm_timeout)))
            return
        engine.keep_backup(backup)
        counts = engine.record()[1]
        engine.finish_persist()
        final = engine.result(True, before or "", after or "", counts, ev["drift"],
                              engine.done_msg(ev["drift"]) + " (commit confirmed)")
        final.pop("diff", None)
        write_atomic(os.path.join(txn, "final.json"), json.dumps(final))
    except Exception as exc:  # the detached worker has no one else to tell
        write_atomic(os.path.join(txn, "final.json"), json.dumps({"failed": True, "msg": "worker error: %s" % exc}))
    finally:
        held.release()


def roll_back(engine, backup, applied, confirm_timeout):
    """Restore ``backup`` after an unconfirmed apply, but only over the table that apply left (``applied``, its
    listing): a newer policy or a bypass loaded since (by the agent, another state_dir, a hand) is never replaced by
    an older one. Returns the final result."""
    try:
        live = engine.nft.listing()
    except ApplyError as exc:
        return {"rolled_back": False, "failed": True,
                "msg": "no confirmation within %ss, and the live table could not be read, so nothing was restored: "
                       "%s" % (confirm_timeout, exc)}
    if live != applied:
        return {"rolled_back": False, "superseded": True, "failed": True,
                "msg": "no confirmation within %ss, but table %s changed after this apply (a newer apply, a bypass "
                       "or a hand edit), so the previous table was NOT restored over it; look at it with 'nft list "
                       "table %s'" % (confirm_timeout, contract.TABLE, contract.TABLE)}
    try:
        engine.nft.load(backup)
    except ApplyError as exc:
        return {"rolled_back": True,
                "msg": "no confirmation within %ss, and restoring the previous table failed: %s" % (confirm_timeout, exc)}
    return {"rolled_back": True,
            "msg": "no confirmation reached the host within confirm_timeout=%ss after the new ruleset went live; the "
                   "previous table %s was restored" % (confirm_timeout, contract.TABLE)}


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
        result = json.loads(read_text(os.path.join(txn, "result.json")) or "null")
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
        final = json.loads(read_text(os.path.join(txn, "final.json")) or "null")
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
