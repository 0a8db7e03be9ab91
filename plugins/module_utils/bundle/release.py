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
mode, the policy digest, the signing key) or when the current release has less than ``renew`` seconds of
validity left. Otherwise the current release is returned unchanged: publishing is idempotent.

Controller (``install_release``), in ``base_dir`` (``/var/lib/mseg-controller``):

* ``releases/<serial>/<host>.json``: the envelopes, ``releases/<serial>/.release.json``: the metadata (a dot
  file, so no inventory name can collide with it);
* ``current``: a symlink to ``releases/<serial>``, replaced by ``rename(2)`` only after the new directory is
  complete, so a reader opens either every file of the old release or every file of the new one.

Every envelope is verified with the public key (``bundle.verify``) before anything is written, and a serial
older than the one being served is refused: a controller cannot be made to serve a forged or rolled-back
release. File times are set to the release's ``created_at``, so every replica gives a bundle the same
nginx ETag (modification time and size) and a client keeps its 304 across a failover.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import shutil
import tempfile
import time

from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import write_atomic

ARCHIVE_FORMAT = 1
META_NAME = ".release.json"


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


def sign_release(state_dir, private_key_pem, rulesets, modes, policy_digest, validity, renew, now=None,
                 keep=5, check_mode=False, mode_rulesets=None):
    """Return ``(changed, info)``; sign and record a new release when one is needed.

    ``info``: ``serial``, ``archive`` (path of the release archive), ``created_at``, ``valid_until``,
    ``key_id``, ``hosts`` (sorted names) and ``reason`` (why a new release was or was not made).
    """
    if not rulesets:
        raise ReleaseError("there is no host to publish a bundle for: the compile step returned no ruleset")
    missing = sorted(set(rulesets) - set(modes))
    if missing:
        raise ReleaseError("no mode for host(s) %s" % ", ".join(missing))
    if renew >= validity:
        raise ReleaseError("the renewal margin (%d s) must be shorter than the validity (%d s)" % (renew, validity))
    now = int(time.time() if now is None else now)
    kid = bundle.key_id(bundle.public_key_pem(private_key_pem))
    mode_rulesets = mode_rulesets or {}
    fingerprint = _fingerprint(rulesets, modes, mode_rulesets)
    state = _read_json(os.path.join(state_dir, "state.json")) or {}
    last_serial = int(state.get("serial", 0))

    def archive_of(serial):
        return os.path.join(state_dir, "releases", "%d.json" % serial)

    reason = None
    if not state:
        reason = "first release"
    elif state.get("key_id") != kid:
        reason = "signing key changed"
    elif state.get("policy_digest") != policy_digest or state.get("hosts") != fingerprint:
        reason = "policy changed"
    elif bundle.parse_time(state["valid_until"]) - now < renew:
        reason = "renewal: valid until %s" % state["valid_until"]
    elif not os.path.exists(archive_of(last_serial)):
        reason = "release archive missing"
    info = {"key_id": kid, "hosts": sorted(rulesets)}
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
    bundles = {}
    for host in sorted(rulesets):
        try:
            bundles[host] = bundle.make_envelope(host, serial, policy_digest, modes[host], rulesets[host],
                                                 created_at, valid_until, private_key_pem,
                                                 mode_rulesets.get(host)).decode("utf-8")
        except ValueError as exc:
            raise ReleaseError("cannot sign the bundle for %s: %s" % (host, exc))
    meta = {"serial": serial, "policy_digest": policy_digest, "key_id": kid, "created_at": created_at,
            "valid_until": valid_until, "hosts": len(bundles)}
    archive = {"format": ARCHIVE_FORMAT, "release": meta, "bundles": bundles}
    releases = os.path.join(state_dir, "releases")
    if not os.path.isdir(releases):
        os.makedirs(releases, 0o700)
    write_atomic(archive_of(serial), bundle.canonical_json(archive))
    state = dict(meta, hosts=fingerprint)
    write_atomic(os.path.join(state_dir, "state.json"), bundle.canonical_json(state))
    for name in os.listdir(releases):
        stem = name[:-5] if name.endswith(".json") else ""
        if stem.isdigit() and int(stem) <= serial - keep:
            os.unlink(os.path.join(releases, name))
    return True, info


def load_archive(data, public_key_pem, now):
    """Parse and verify a release archive; return ``(meta, bundles)`` or raise ReleaseError.

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
            parsed = bundle.verify(bundles[host].encode("utf-8"), public_key_pem, host, None, now)
        except bundle.BundleError as exc:
            raise ReleaseError("release %d: bundle for %s refused: %s" % (serial, host, exc.reason), exc.kind)
        except (ValueError, AttributeError) as exc:
            raise ReleaseError("release %d: bundle for %s cannot be checked: %s" % (serial, host, exc), "format")
        if parsed.serial != serial:
            raise ReleaseError("release %d: bundle for %s carries serial %d" % (serial, host, parsed.serial),
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
