# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-host agent: pull signed bundles, apply them atomically, restore them at boot, obey local overrides.

Plain Python (no Ansible imports), installed on the host by the ``agent`` role under ``/usr/lib/mseg-agent``
with the collection's package path preserved (only the host packages: ``common``, ``nft``, ``apply``, ``bundle``,
``agent``), so it reuses the collection's engines unchanged: ``bundle.envelope.verify`` (the one verification
path), ``apply.engine`` (the same atomic, idempotent apply ``nft_apply`` uses), ``common.logline`` (kernel log
lines) and ``nft.bypass`` (the emergency table).

Privileges: the agent runs as its own user with only ``CAP_NET_ADMIN``. ``/etc/mseg`` stays root's (0700, the pki
role keeps it so); systemd hands the agent its configuration and the bundle signing key through ``LoadCredential=``.
Its TLS key, certificate, CA and CRL are root-owned copies its group may read (``/etc/mseg-agent``, refreshed on every
renewal), re-read when they change (``fetch.Credentials``). What the agent writes lives in its state directory
(``agent/state.py``).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import subprocess
import time

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import REFUSED_WORD, AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.agent.fetch import Credentials, Fetcher, controller_url
from ansible_collections.mseg.fleet.plugins.module_utils.agent.state import State
from ansible_collections.mseg.fleet.plugins.module_utils.apply.engine import Request, apply, last_applied, lock
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import Paths, restore_script, restore_templates
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundles
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft, find_nft


# How the operator ends a local override; the agent's messages name it.
CLEAR_OVERRIDE = "'%s mode clear'" % contract.HOST_CLI
# The controllers that answered and failed last, by URL, so a restart starts after a controller that failed
# (``{"last_good": url, "last_failed": url}``, written only when one of them changes).
FAILOVER_FILE = "controllers.json"
_EMERGENCY_RE = re.compile(r"^\s*counter\s+%s\s*\{" % re.escape(contract.EMERGENCY_MARKER), re.M)
# How an operator hands a foreign emergency bypass back to the agent (the agent's own bypass replaces it, then clear).
HAND_BACK = "'%s mode bypass' then %s" % (contract.HOST_CLI, CLEAR_OVERRIDE)


def utcnow_text(now=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def sd_notify(text):
    """Tell systemd (Type=notify) that we are ready; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(address)
        sock.sendall(text.encode("utf-8"))
    except OSError:
        pass  # systemd went away; nothing to tell
    finally:
        sock.close()


def bundle_fields(item):
    return {"serial": item.serial, "mode": item.mode, "policy_digest": item.policy_digest,
            "ruleset_sha256": item.ruleset_sha256, "created_at": item.created_at, "valid_until": item.valid_until,
            "host": item.host}


class Agent:
    """Polls, verifies, applies. ``fetcher``, ``applier`` and ``clock`` are replaceable in unit tests."""

    def __init__(self, host, state_dir, public_key, log, peers=(), controllers=(), interval=2.0, jitter=0.2,
                 fetcher=None, applier=None, clock=time.time, lister=None, fleet=contract.DEFAULT_FLEET,
                 table_lock=contract.TABLE_LOCK):
        self.host = host
        self.table_lock = table_lock  # the host-wide lock of the table (None only in tests that fake the kernel)
        self.fleet = fleet
        self.state = State(state_dir)
        self.public_key = public_key
        self.log = log
        self.peers = list(peers)
        self.controllers = list(controllers)
        self.interval = interval
        self.jitter = jitter
        self.fetcher = fetcher
        self.applier = applier or self._apply_engine
        self.clock = clock
        # The live table without counters (None: no table). A replaced applier is a fake kernel: no table to list.
        self.lister = lister or (None if applier else lambda: Nft().listing())
        self._standing_down = False
        self.preferred = 0
        self._last_problem = None
        self._refused = {}  # controller index -> ETag of the bundle refused from it (None: it sent none)
        self._refusal = None  # why the last bundle was refused
        self._tls_problem = None  # why renewed TLS files could not be used (logged once)

    @classmethod
    def from_config(cls, config, log, with_tls=True):
        fetcher = Fetcher(Credentials(config), config.timeout, config.max_body) if with_tls else None
        agent = cls(config.host, config.state_dir, config.read("public_key"), log, config.peers,
                    config.controllers, config.interval, config.jitter, fetcher=fetcher, fleet=config.fleet)
        return agent

    @classmethod
    def from_identity(cls, state_dir, log):
        """The CLI's agent: host, peers and public key from what the running agent recorded."""
        state = State(state_dir)
        identity = state.read_json("identity.json")
        if not identity:
            raise AgentError("%s has no identity.json: the agent has never started on this host; start it with "
                             "'systemctl start mseg-agent'" % state_dir)
        return cls(identity["host"], state_dir, identity["public_key"].encode("ascii"), log,
                   [tuple(p) for p in identity.get("peers", [])],
                   fleet=identity.get("fleet", contract.DEFAULT_FLEET))

    # -- files -----------------------------------------------------------------

    def record_identity(self):
        self.state.ensure()
        identity = {"host": self.host, "fleet": self.fleet, "peers": [list(p) for p in self.peers],
                    "public_key": self.public_key.decode("ascii"),
                    "controllers": [controller_url(c) for c in self.controllers]}
        if self.state.read_json("identity.json") != identity:
            self.state.write_json("identity.json", identity)

    def meta(self):
        return self.state.read_json("meta.json", {}) or {}

    def update_status(self, **changes):
        status = self.state.read_json("status.json", {}) or {}
        status.update(changes)
        meta = self.meta()
        override = self.state.read_json("override.json")
        status.update(host=self.host, serial=meta.get("serial"), bundle=meta.get("bundle"), override=override,
                      mode=self.effective_mode(meta, override), updated_at=utcnow_text(self.clock()))
        self.state.write_json("status.json", status)
        return status

    @staticmethod
    def effective_mode(meta, override):
        if override and override.get("kind") == "bypass":
            return "bypass"
        if override and override.get("kind") == "mode":
            return override.get("mode")
        if override and override.get("kind") == "rollback":
            return (override.get("bundle") or {}).get("mode")
        return (meta.get("bundle") or {}).get("mode")

    # -- verifying and applying --------------------------------------------------

    def verify_stored(self, name):
        """Re-verify an envelope we accepted earlier (signature and host; its own time, no replay check)."""
        raw = self.state.read_bytes(name)
        if raw is None:
            return None, None
        stored = self.state.read_json(name.replace(".json", ".meta.json"), {}) or {}
        try:
            when = bundles.parse_time(stored.get("created_at", ""))
        except ValueError:
            when = self.clock()
        try:
            return raw, bundles.verify(raw, self.public_key, self.host, None, when, fleet=self.fleet,
                                       max_validity=None)
        except bundles.BundleError as exc:
            raise AgentError("the stored bundle %s failed verification (%s: %s); it is not applied"
                             % (self.state.path(name), REFUSED_WORD[exc.kind], exc.reason))

    def foreign_bypass(self):
        """True when the live table is an emergency bypass the agent did not put there (mseg.fleet.bypass before the
        agent came, a boot restore of /etc/mseg's persisted bypass, a hand): the agent never replaces it."""
        if self.lister is None:
            return False
        try:
            live = self.lister()
        except MsegError:
            return False  # no readable table: nothing to protect; the apply itself reports the kernel's problem
        if not live or not _EMERGENCY_RE.search(live):
            return False
        return not last_applied(Paths(self.state.nft_dir, None), live)

    def _stand_down(self, what):
        """Whether to leave the table alone because of a foreign emergency bypass (logged once while it lasts)."""
        if not self.foreign_bypass():
            if self._standing_down:
                self.log.warning("the foreign emergency bypass is gone; the agent applies its policy again")
            self._standing_down = False
            return False
        if not self._standing_down:
            self.log.warning("the live table inet mseg is an emergency bypass the agent did not apply (counter %s): "
                             "the agent stands down and does not apply %s until it is lifted (%s hands the table "
                             "back to the agent)", contract.EMERGENCY_MARKER, what, HAND_BACK)
        self._standing_down = True
        return True

    def _apply_engine(self, content):
        # persisted (no boot unit): the judged JSON form in nft/ruleset.json is what ``restore_fallback`` loads when
        # the stored bundle cannot be restored at boot
        request = Request(content, "present", persist=True, peers=self.peers, state_dir=self.state.nft_dir,
                          unit_dir=None, lock_timeout=60, table_lock=self.table_lock)
        return apply(request)

    def persisted_copy(self):
        """The judged JSON form of the last ruleset the agent applied (``restore_fallback`` loads it)."""
        return Paths(self.state.nft_dir, None).ruleset_json

    def restore_fallback(self, nft_path=None, runner=subprocess.run):
        """Boot, when the desired ruleset cannot be applied (the stored bundle fails verification after a key
        rotation, a truncated file, an apply that fails): never leave the host without a table. Runs nft_apply's
        boot restore script (``apply/templates/mseg-restore.sh``) on the agent's own persisted copy: it loads the
        judged JSON form of the last ruleset the agent applied (``nft/ruleset.json``, sha256 header, ``nft -j -c``),
        else the fail-closed table that lets in only SSH on the management ports. Returns (loaded_last, output).

        The copy is the agent user's (0600 in its 0700 state directory): the one writer of the table on this host,
        which holds CAP_NET_ADMIN anyway, so trusting its file gives nobody more than they have; root never reads it.
        """
        paths = Paths(self.state.nft_dir, None)
        script = restore_script(paths, self.peers, nft_path or find_nft(), restore_templates())
        with lock(paths, 60, self.table_lock):
            proc = runner(["/bin/sh", "-c", script], capture_output=True, text=True, check=False)
        output = " ".join(((proc.stdout or "") + (proc.stderr or "")).split())
        if proc.returncode == 0:
            self.log.error("boot restore: loaded the last applied ruleset %s instead (%s)", paths.ruleset_json, output)
        else:
            self.log.error("boot restore: loaded the fail-closed table (only SSH on the management ports is let in): "
                           "%s", output)
        self.update_status(last_apply={"at": utcnow_text(self.clock()), "epoch": self.clock(), "why": "boot restore",
                                       "what": "last applied ruleset" if proc.returncode == 0 else "fail-closed table",
                                       "changed": True, "msg": output})
        return proc.returncode == 0, output

    @staticmethod
    def ruleset_in_mode(item, mode):
        """The bundle's ruleset rendered for ``mode``: its own, or one it carries for a local mode switch."""
        if item.mode == mode:
            return item.ruleset
        ruleset = (item.mode_rulesets or {}).get(mode)
        if ruleset is None:
            raise AgentError("bundle serial %d carries no %s ruleset (it was published without mode_rulesets); "
                             "publish again with mseg.fleet.publish, or change mseg_mode for this host and publish"
                             % (item.serial, mode))
        return ruleset

    def desired(self):
        """What the kernel should run now: (ruleset text, description) or (None, reason)."""
        override = self.state.read_json("override.json")
        if override and override.get("kind") == "mode":
            _raw, item = self.verify_stored("current.json")
            if item is None:
                raise AgentError("no bundle received yet, so there is no policy to run in %s mode"
                                 % override.get("mode"))
            return self.ruleset_in_mode(item, override.get("mode")), "serial %d mode=%s (local override)" % (
                item.serial, override.get("mode"))
        if override and override.get("kind") == "bypass":
            return bypass_ruleset(self.host), "bypass (local override)"
        if override and override.get("kind") == "rollback":
            _raw, item = self.verify_stored("rollback.json")
            if item is None:
                raise AgentError("the rollback override has no bundle; clear it with %s" % CLEAR_OVERRIDE)
            return item.ruleset, "serial %d mode=%s (local rollback)" % (item.serial, item.mode)
        _raw, item = self.verify_stored("current.json")
        if item is None:
            return None, "no bundle received yet"
        return item.ruleset, "serial %d mode=%s" % (item.serial, item.mode)

    def apply_desired(self, why):
        """Bring the kernel in line with the desired ruleset (idempotent). Returns the engine's result or None."""
        content, what = self.desired()
        if content is None:
            self.log.info("%s: %s; the table stays as it is", why, what)
            return None
        override = self.state.read_json("override.json")
        if not (override and override.get("kind") == "bypass") and self._stand_down(what):
            return None
        result = self.applier(content)
        if result.get("changed"):
            self.log.info("%s: applied %s (%s)", why, what, result.get("msg"))
        self.update_status(last_apply={"at": utcnow_text(self.clock()), "epoch": self.clock(), "what": what,
                                       "why": why, "changed": bool(result.get("changed")), "msg": result.get("msg")})
        return result

    def accept(self, raw, source):
        """Handle one envelope fetched from ``source``. Returns applied, unchanged, held, refused or failed."""
        with self.state.locked():
            meta = self.meta()
            if raw == self.state.read_bytes("current.json"):
                return "unchanged"
            try:
                item = self._verify(raw, meta)
            except bundles.BundleError as exc:
                self.log.error("bundle refused from %s: %s (%s); keeping serial %s and the live policy",
                               source, REFUSED_WORD[exc.kind], exc.reason, meta.get("serial"))
                self._refusal = REFUSED_WORD[exc.kind]
                self.update_status(last_error={"at": utcnow_text(self.clock()), "kind": exc.kind,
                                               "msg": exc.reason, "source": source})
                return "refused"
            override = self.state.read_json("override.json")
            local_mode = override.get("mode") if override and override.get("kind") == "mode" else None
            if (not override or local_mode) and self._stand_down("bundle serial %d" % item.serial):
                self._store(raw, item, meta)
                self.update_status(last_error={"at": utcnow_text(self.clock()), "kind": "bypass",
                                               "msg": "a foreign emergency bypass holds the table",
                                               "source": source})
                return "held"
            if not override or local_mode:
                try:
                    result = self.applier(self.ruleset_in_mode(item, local_mode) if local_mode else item.ruleset)
                except MsegError as exc:
                    self.log.error("bundle serial %d from %s could not be applied: %s; the previous policy stays",
                                   item.serial, source, exc)
                    self.update_status(last_error={"at": utcnow_text(self.clock()), "kind": "apply",
                                                   "msg": str(exc), "source": source})
                    return "failed"
            self._store(raw, item, meta)
            if override and not local_mode:
                self.log.warning("bundle serial %d mode=%s from %s verified and kept, not applied: local override "
                                 "%s holds (clear it with %s)", item.serial, item.mode, source,
                                 override.get("kind"), CLEAR_OVERRIDE)
                self.update_status(last_error=None)
                return "held"
            self.log.info("bundle serial %d mode=%s policy=%s from %s applied (%s)", item.serial,
                          local_mode or item.mode, item.policy_digest[:16], source, result.get("msg"))
            self.update_status(last_error=None, last_apply={
                "at": utcnow_text(self.clock()), "epoch": self.clock(),
                "what": "serial %d mode=%s" % (item.serial, item.mode),
                "why": "new bundle", "changed": bool(result.get("changed")), "msg": result.get("msg")})
            return "applied"

    def _verify(self, raw, meta):
        """``bundles.verify``, with a nesting too deep for the parser refused as a format error, never raised."""
        try:
            return bundles.verify(raw, self.public_key, self.host, self.state.replay_state(meta), self.clock(),
                                  fleet=self.fleet, retired=self.state.retired_keys(meta))
        except RecursionError:
            raise bundles.BundleError("the bundle nests JSON too deeply to parse", "format")

    def _store(self, raw, item, meta):
        current = self.state.read_bytes("current.json")
        if current is not None:
            self.state.write("previous.json", current)
            self.state.write_json("previous.meta.json", self.state.read_json("current.meta.json", {}))
        self.state.write("current.json", raw)
        self.state.write_json("current.meta.json", bundle_fields(item))
        meta = dict(self.state.accepted(meta, item), bundle=bundle_fields(item))
        self.state.write_json("meta.json", meta)

    # -- polling -------------------------------------------------------------------

    def order(self):
        """Controllers to try: the one that answered last first, then the others in configured order."""
        count = len(self.controllers)
        return [self.controllers[(self.preferred + i) % count] for i in range(count)]

    def resume_order(self):
        """At start: begin at the controller that answered last, unless it is the one that failed last; else
        right after the one that failed last. A controller that broke the agent is not the first one asked."""
        urls = [controller_url(c) for c in self.controllers]
        recorded = self.state.read_json(FAILOVER_FILE, {}) or {}
        good, failed = recorded.get("last_good"), recorded.get("last_failed")
        if good in urls and good != failed:
            self.preferred = urls.index(good)
        elif failed in urls:
            self.preferred = (urls.index(failed) + 1) % len(urls)

    def _remember(self, **changes):
        """Record the last good / last failed controller (only when it changes: no write per poll)."""
        recorded = self.state.read_json(FAILOVER_FILE, {}) or {}
        if all(recorded.get(key) == value for key, value in changes.items()):
            return
        recorded.update(changes)
        self.state.write_json(FAILOVER_FILE, recorded)

    def refresh_credentials(self):
        """Pick up renewed TLS files before a fetch cycle (the fetcher rebuilds its context when they changed)."""
        refresh = getattr(self.fetcher, "refresh", None)
        if refresh is None:
            return
        if refresh():
            self.log.info("the TLS files changed: new connections use the renewed certificate, key, CA and CRL")
        problem = getattr(getattr(self.fetcher, "credentials", None), "problem", None)
        if problem and problem != self._tls_problem:
            self.log.error(problem)
        self._tls_problem = problem

    def poll_once(self):
        """One poll with failover. Returns the outcome (see ``accept``), or ``refused`` / ``unreachable`` when no
        controller gave a bundle that could be accepted.

        A controller whose bundle was refused (forged, stale after a missed publish, for another host) counts as
        failed: the next one is asked at once, and it is not preferred, so one bad replica cannot hold the agent
        back from the good ones. It is asked again with the refused bundle's ETag, which keeps the refusal from
        being downloaded and logged again on every poll while it lasts.
        """
        self.refresh_credentials()
        if self._standing_down:
            with self.state.locked():
                self.apply_desired("emergency bypass check")  # applies the held policy once the bypass is lifted
        meta = self.meta()
        etag = meta.get("etag") if self.state.read_bytes("current.json") is not None else None
        failures = []
        refused = False
        for controller in self.order():
            url = controller_url(controller)
            index = self.controllers.index(controller)
            still_refused = index in self._refused
            try:
                status, body, new_etag = self.fetcher(controller, self._refused[index] if still_refused else etag)
            except Exception as exc:  # whatever a controller does is a failover to the next one, never an exit
                failures.append("%s: %s" % (url, str(exc) or exc.__class__.__name__))
                self._remember(last_failed=url)
                continue
            if status == 304 and still_refused and self._refused[index] is not None:
                failures.append("%s: still serves the bundle refused before" % url)
                refused = True
                continue
            if status == 304:
                outcome = "unchanged"
            elif status == 200:
                outcome = self.accept(body, url)
                if outcome == "refused":
                    self._refused[index] = new_etag
                    failures.append("%s: bundle refused (%s)" % (url, self._refusal))
                    self._remember(last_failed=url)
                    refused = True
                    continue
                if outcome in ("applied", "unchanged", "held") and new_etag:
                    with self.state.locked():
                        self.state.write_json("meta.json", dict(self.meta(), etag=new_etag))
            else:
                failures.append("%s: HTTP %d" % (url, status))
                self._remember(last_failed=url)
                continue
            self._refused.pop(index, None)
            self.preferred = index
            self._remember(last_good=url)
            if failures:
                self._problem("failover to %s after %s" % (url, "; ".join(failures)), logging.WARNING)
            else:
                self._problem(None)
            self.update_status(last_poll={"at": utcnow_text(self.clock()), "controller": url, "result": outcome})
            return outcome
        outcome = "refused" if refused else "unreachable"
        what = "no controller serves a bundle this host accepts" if refused else "every controller is unreachable"
        self._problem("%s (%s); keeping the live policy" % (what, "; ".join(failures)), logging.ERROR)
        self.update_status(last_poll={"at": utcnow_text(self.clock()), "controller": None, "result": outcome,
                                      "detail": "; ".join(failures)})
        return outcome

    def _problem(self, text, level=logging.WARNING):
        """Log a problem once while it lasts, and its end."""
        if text == self._last_problem:
            return
        if text is None:
            self.log.info("controllers reachable again")
        else:
            self.log.log(level, text)
        self._last_problem = text

    def next_delay(self):
        return self.interval * (1 + random.uniform(-self.jitter, self.jitter))

    def run(self, stop):
        self.record_identity()
        self.resume_order()
        with self.state.locked():
            try:
                self.apply_desired("start")
            except MsegError as exc:
                self.log.error("start: %s; the live table stays as it is", exc)
        sd_notify("READY=1")
        while not stop.is_set():
            try:
                self.poll_once()
            except MsegError as exc:
                self._problem(str(exc), logging.ERROR)
            except Exception as exc:  # one bad poll must not stop the agent: log it, keep the policy, poll again
                self._problem("poll failed (%s: %s); keeping the live policy" % (exc.__class__.__name__, exc),
                              logging.ERROR)
            stop.wait(self.next_delay())

    # -- local overrides ---------------------------------------------------------------

    def set_override(self, override, who):
        with self.state.locked():
            previous = self.state.read_json("override.json")
            override = dict(override, set_at=utcnow_text(self.clock()), set_by=who)
            self.state.write_json("override.json", override)
            try:
                result = self.apply_desired("local override")
            except MsegError:
                if previous:
                    self.state.write_json("override.json", previous)
                else:
                    self.state.remove("override.json")
                raise
        return result

    def clear_override(self, who):
        with self.state.locked():
            previous = self.state.read_json("override.json")
            if not previous:
                return None, "no local override is set; the agent follows the controllers"
            self.state.remove("override.json")
            self.state.remove("rollback.json")
            self.state.remove("rollback.meta.json")
            self.log.warning("local override %s cleared by %s; following the controllers again",
                             previous.get("kind"), who)
            return self.apply_desired("override cleared"), "cleared the local override %s" % previous.get("kind")

    def set_mode(self, mode, who):
        """A local observe/enforce override: the host runs its policy in that mode, new bundles included."""
        self.log.warning("local override: mode %s set by %s (bundles are applied in %s mode until %s)",
                         mode, who, mode, CLEAR_OVERRIDE)
        return self.set_override({"kind": "mode", "mode": mode}, who)

    def bypass(self, who):
        self.log.warning("local override: mode bypass set by %s (the table accepts everything until %s)",
                         who, CLEAR_OVERRIDE)
        return self.set_override({"kind": "bypass"}, who)

    def rollback(self, who):
        with self.state.locked():
            raw, item = self.verify_stored("previous.json")
            if item is None:
                raise AgentError("there is no previous bundle to roll back to on this host")
            self.state.write("rollback.json", raw)
            self.state.write_json("rollback.meta.json", bundle_fields(item))
        self.log.warning("local override: rollback to serial %d set by %s (newer bundles are verified and kept "
                         "but not applied until %s)", item.serial, who, CLEAR_OVERRIDE)
        return self.set_override({"kind": "rollback", "bundle": bundle_fields(item)}, who)
