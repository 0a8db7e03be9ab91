# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Releases of signed bundles: signed once on the control node, installed atomically on every controller.

Plain Python (no Ansible imports); the ``bundle_sign`` and ``bundle_release`` modules wrap it.

Control node (``sign_release``), in ``state_dir``:

* ``state.json``: the last release (serial, key id, policy digest, per-host ruleset hash and mode, times);
* ``releases/<serial>.json``: the release archive, one JSON file holding every host's envelope and the
  release metadata; this single file is what travels to the controllers.

A new release (serial + 1) is signed only when something a bundle carries changed (a host, its ruleset or
mode, the policy digest, the fleet, the payload format, the signing key) or when the current release has less
than ``renew`` seconds of validity left. Otherwise the current release is returned unchanged: publishing is
idempotent. Allocating the serial, signing and recording the release happen under an exclusive lock
(``publish.lock`` in ``state_dir``), so two publishes never sign one serial with different content. During a key
rotation (``endorsing_key``: the previous key) every bundle carries the previous key's endorsement of the new one
(``endorsement.json``, made once per rotation).

Controller (``install_release``), in ``base_dir`` (``/var/lib/mseg-controller``):

* ``releases/<serial>/<host>.json``: the envelopes, ``releases/<serial>/.release.json``: the metadata (a dot
  file, so no inventory name can collide with it);
* ``current``: a symlink to ``releases/<serial>``, replaced by ``rename(2)`` only after the new directory is
  complete, so a reader opens either every file of the old release or every file of the new one.

Every envelope is verified with the public key (``bundle.verify``) before anything is written, a serial
older than the one being served is refused, and so is a release whose serial is installed already with other
content: a controller cannot be made to serve a forged, rolled-back or conflicting release. File times are set to
the release's ``created_at``, so every replica gives a bundle the same nginx ETag (modification time and size) and
a client keeps its 304 across a failover.
"""

from __future__ import absolute_import, division, print_function

import base64
import hashlib
import json
import os
import shutil
import tempfile
import time

from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import DEFAULT_FLEET
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import FileLock, write_atomic

ARCHIVE_FORMAT = 1
META_NAME = ".release.json"
LOCK_NAME = "publish.lock"
ENDORSEMENT_NAME = "endorsement.json"
DEFAULT_LOCK_TIMEOUT = 300


class ReleaseError(MsegError):
    """A release that must not be signed or installed; the message says what and how to fix it."""

    def __init__(self, message, kind="release"):
        self.kind = kind
        super(ReleaseError, self).__init__(message)


def _read_json(path):
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (IOError, OSError):
        return None
    except ValueError as exc:
        raise ReleaseError("%s is not valid JSON (%s); remove it to start a new release history" % (path, exc))


def _sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fingerprint(rulesets, modes, mode_rulesets):
    prints = {}
    for host in rulesets:
        prints[host] = {"mode": modes[host], "ruleset_sha256": _sha256(rulesets[host])}
        others = mode_rulesets.get(host)
        if others:
            prints[host]["mode_rulesets_sha256"] = dict((mode, _sha256(text)) for mode, text in others.items())
    return prints


def _endorsement(state_dir, endorsing_key, passphrase, public, fleet, now, overlap, check_mode):
    """The previous key's endorsement of ``public`` for ``fleet``: the one recorded for this rotation, or a new one
    valid for ``overlap`` seconds from ``now`` (the previous key's remaining life on agents that saw it)."""
    path = os.path.join(state_dir, ENDORSEMENT_NAME)
    recorded = _read_json(path)
    kid, old_id = bundle.key_id(public), bundle.key_id(bundle.public_key_pem(endorsing_key, passphrase))
    try:
        statement = json.loads(base64.b64decode(recorded["statement"]))
        if (statement["key_id"], statement["endorser"], statement["fleet"]) == (kid, old_id, fleet):
            return recorded
    except (TypeError, KeyError, ValueError):
        pass
    endorsement = bundle.endorse(endorsing_key, public, now, now + overlap, fleet, passphrase)
    if not check_mode:
        write_atomic(path, bundle.canonical_json(endorsement).decode("utf-8"))
    return endorsement


def sign_release(state_dir, private_key_pem, rulesets, modes, policy_digest, validity, renew, now=None,
                 keep=5, check_mode=False, mode_rulesets=None, passphrase=None, fleet=DEFAULT_FLEET,
                 max_validity=bundle.MAX_VALIDITY, endorsing_key=None, overlap=86400,
                 lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """Return ``(changed, info)``; sign and record a new release when one is needed.

    ``info``: ``serial``, ``archive`` (path of the release archive), ``created_at``, ``valid_until``,
    ``key_id``, ``fleet``, ``hosts`` (sorted names) and ``reason`` (why a new release was or was not made).
    Holds ``publish.lock`` in ``state_dir`` from reading the last serial to recording the new one.
    """
    if check_mode and not os.path.isdir(state_dir):
        return _sign_release(state_dir, private_key_pem, rulesets, modes, policy_digest, validity, renew, now,
                             keep, check_mode, mode_rulesets, passphrase, fleet, max_validity, endorsing_key, overlap)
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir, 0o700)
    lock = FileLock(os.path.join(state_dir, LOCK_NAME), lock_timeout, lambda holder: ReleaseError(
        "another publish (%s) has held %s for %d s; wait for it to finish, or remove the lock file if that process "
        "is gone" % (holder, os.path.join(state_dir, LOCK_NAME), lock_timeout), "busy"))
    with lock:
        return _sign_release(state_dir, private_key_pem, rulesets, modes, policy_digest, validity, renew, now,
                             keep, check_mode, mode_rulesets, passphrase, fleet, max_validity, endorsing_key, overlap)


def _sign_release(state_dir, private_key_pem, rulesets, modes, policy_digest, validity, renew, now, keep,
                  check_mode, mode_rulesets, passphrase, fleet, max_validity, endorsing_key, overlap):
    if not rulesets:
        raise ReleaseError("there is no host to publish a bundle for: the compile step returned no ruleset")
    missing = sorted(set(rulesets) - set(modes))
    if missing:
        raise ReleaseError("no mode for host(s) %s" % ", ".join(missing))
    if renew >= validity:
        raise ReleaseError("the renewal margin (%d s) must be shorter than the validity (%d s)" % (renew, validity))
    bound = min(max_validity, bundle.MAX_VALIDITY)
    if validity > bound:
        raise ReleaseError("the validity (%d s) is longer than the bound of %d s that agents enforce; lower "
                           "controller_bundle_validity" % (validity, bound))
    try:
        bundle.check_fleet(fleet)
        public = bundle.public_key_pem(private_key_pem, passphrase)
    except ValueError as exc:
        raise ReleaseError(str(exc))
    now = int(time.time() if now is None else now)
    kid = bundle.key_id(public)
    mode_rulesets = mode_rulesets or {}
    fingerprint = _fingerprint(rulesets, modes, mode_rulesets)
    state = _read_json(os.path.join(state_dir, "state.json")) or {}
    last_serial = state.get("serial", 0)
    if isinstance(last_serial, bool) or not isinstance(last_serial, int) or last_serial < 0:
        raise ReleaseError("%s holds serial %r, not a serial; restore it from a backup"
                           % (os.path.join(state_dir, "state.json"), last_serial))

    def archive_of(serial):
        return os.path.join(state_dir, "releases", "%d.json" % serial)

    reason = None
    if not state:
        reason = "first release"
    elif state.get("key_id") != kid:
        reason = "signing key changed"
    elif state.get("fleet") != fleet or state.get("format") != bundle.FORMAT:
        reason = "fleet or bundle format changed"
    elif state.get("policy_digest") != policy_digest or state.get("hosts") != fingerprint:
        reason = "policy changed"
    elif bundle.parse_time(state["valid_until"]) - now < renew:
        reason = "renewal: valid until %s" % state["valid_until"]
    elif not os.path.exists(archive_of(last_serial)):
        reason = "release archive missing"
    info = {"key_id": kid, "fleet": fleet, "hosts": sorted(rulesets)}
    if reason is None:
        info.update(serial=last_serial, archive=archive_of(last_serial), created_at=state["created_at"],
                    valid_until=state["valid_until"], reason="unchanged")
        return False, info
    serial = last_serial + 1
    created_at = bundle.format_time(now)
    valid_until = bundle.format_time(now + validity)
    info.update(serial=serial, archive=archive_of(serial), created_at=created_at, valid_until=valid_until,
                reason=reason)
    if check_mode:
        return True, info
    endorsement = None
    if endorsing_key:
        try:
            endorsement = _endorsement(state_dir, endorsing_key, passphrase, public, fleet, now, overlap, check_mode)
        except ValueError as exc:
            raise ReleaseError("cannot endorse the new signing key with the previous one: %s" % exc)
    bundles = {}
    for host in sorted(rulesets):
        try:
            bundles[host] = bundle.make_envelope(host, serial, policy_digest, modes[host], rulesets[host],
                                                 created_at, valid_until, private_key_pem,
                                                 mode_rulesets.get(host), fleet, passphrase, endorsement,
                                                 bound).decode("utf-8")
        except ValueError as exc:
            raise ReleaseError("cannot sign the bundle for %s: %s" % (host, exc))
    meta = {"serial": serial, "policy_digest": policy_digest, "key_id": kid, "fleet": fleet,
            "created_at": created_at, "valid_until": valid_until, "hosts": len(bundles),
            "bundles_sha256": bundles_digest(bundles)}
    archive = {"format": ARCHIVE_FORMAT, "release": meta, "bundles": bundles}
    releases = os.path.join(state_dir, "releases")
    if not os.path.isdir(releases):
        os.makedirs(releases, 0o700)
    write_atomic(archive_of(serial), bundle.canonical_json(archive))
    state = dict(meta, hosts=fingerprint, format=bundle.FORMAT)
    write_atomic(os.path.join(state_dir, "state.json"), bundle.canonical_json(state))
    for name in os.listdir(releases):
        stem = name[:-5] if name.endswith(".json") else ""
        if stem.isdigit() and int(stem) <= serial - keep:
            os.unlink(os.path.join(releases, name))
    return True, info


def bundles_digest(bundles):
    """sha256 of every envelope of a release (canonical JSON of host -> envelope): two releases with one serial
    and different content differ here."""
    return hashlib.sha256(bundle.canonical_json(bundles)).hexdigest()


def load_archive(data, public_key_pem, now, fleet=DEFAULT_FLEET):
    """Parse and verify a release archive for ``fleet``; return ``(meta, bundles)`` or raise ReleaseError.

    A signature failure has kind ``signature`` (log it as "signature mismatch").
    """
    try:
        archive = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        meta, bundles = archive["release"], archive["bundles"]
        if archive["format"] != ARCHIVE_FORMAT or not isinstance(bundles, dict) or not bundles:
            raise ValueError("unsupported format or no bundle")
        serial = int(meta["serial"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ReleaseError("the release archive is malformed (%s)" % exc, "format")
    for host in sorted(bundles):
        try:
            parsed = bundle.verify(bundles[host].encode("utf-8"), public_key_pem, host, None, now, fleet=fleet)
        except bundle.BundleError as exc:
            raise ReleaseError("release %d: bundle for %s refused: %s" % (serial, host, exc.reason), exc.kind)
        except (ValueError, AttributeError) as exc:
            raise ReleaseError("release %d: bundle for %s cannot be checked: %s" % (serial, host, exc), "format")
        if parsed.serial != serial:
            raise ReleaseError("release %d: bundle for %s carries serial %d" % (serial, host, parsed.serial),
                               "format")
    if "bundles_sha256" in meta and meta["bundles_sha256"] != bundles_digest(bundles):
        raise ReleaseError("release %d: its metadata does not describe its bundles (bundles_sha256)" % serial,
                           "format")
    return meta, bundles


def current_serial(base_dir):
    """The serial ``current`` points to, or None."""
    try:
        target = os.readlink(os.path.join(base_dir, "current"))
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return int(name) if name.isdigit() else None


def _release_files(meta, bundles):
    files = dict(("%s.json" % host, text.encode("utf-8")) for host, text in bundles.items())
    files[META_NAME] = bundle.canonical_json(meta)
    return files


def _matches(directory, files, mtime):
    try:
        if set(os.listdir(directory)) != set(files):
            return False
        for name, data in files.items():
            path = os.path.join(directory, name)
            if int(os.stat(path).st_mtime) != mtime:
                return False
            with open(path, "rb") as handle:
                if handle.read() != data:
                    return False
    except OSError:
        return False
    return True


def install_release(base_dir, meta, bundles, keep=3, gid=-1, check_mode=False):
    """Install a verified release and point ``current`` at it. Return ``(changed, previous_serial)``."""
    serial = int(meta["serial"])
    previous = current_serial(base_dir)
    if previous is not None and previous > serial:
        raise ReleaseError("this controller serves release %d, newer than release %d: refusing to roll back "
                           "(publish from the control node that signed %d, or remove %s/current)"
                           % (previous, serial, previous, base_dir), "replay")
    releases = os.path.join(base_dir, "releases")
    target = os.path.join(releases, str(serial))
    files = _release_files(meta, bundles)
    mtime = bundle.parse_time(meta["created_at"])
    complete = _matches(target, files, mtime)
    if complete and previous == serial:
        return False, previous
    if not complete and os.path.isfile(os.path.join(target, META_NAME)):
        try:
            installed = _read_json(os.path.join(target, META_NAME))
        except ReleaseError:
            installed = None  # a damaged metadata file is repaired below
        if installed is not None and installed != json.loads(files[META_NAME].decode("utf-8")):
            raise ReleaseError("release %d is installed here already with other content: two publishes signed one "
                               "serial; refusing it (publish again from the control node's current state, which "
                               "signs a new serial)" % serial, "conflict")
    if check_mode:
        return True, previous
    if not os.path.isdir(releases):
        os.makedirs(releases, 0o750)
        os.chown(releases, -1, gid)
    if not complete:
        staging = tempfile.mkdtemp(dir=releases, prefix=".staging-%d-" % serial)
        try:
            for name, data in files.items():
                path = os.path.join(staging, name)
                with open(path, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(path, 0o640)
                os.chown(path, -1, gid)
                os.utime(path, (mtime, mtime))
            os.chmod(staging, 0o750)
            os.chown(staging, -1, gid)
            if os.path.exists(target):
                stale = tempfile.mkdtemp(dir=releases, prefix=".stale-%d-" % serial)
                os.rename(target, os.path.join(stale, "old"))
                os.rename(staging, target)
                shutil.rmtree(stale)
            else:
                os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    link = os.path.join(base_dir, "current")
    tmp_link = os.path.join(base_dir, ".current-%d" % os.getpid())
    if os.path.lexists(tmp_link):
        os.unlink(tmp_link)
    os.symlink(os.path.join("releases", str(serial)), tmp_link)
    os.rename(tmp_link, link)
    dir_fd = os.open(base_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    _prune(releases, serial, keep)
    return True, previous


def _prune(releases, serial, keep):
    for name in os.listdir(releases):
        path = os.path.join(releases, name)
        if name.isdigit() and int(name) <= serial - keep:
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(".staging-") or name.startswith(".stale-"):
            shutil.rmtree(path, ignore_errors=True)
