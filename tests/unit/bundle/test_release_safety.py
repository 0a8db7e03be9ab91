"""Publishing safely (issue 15 items 4 and 13): concurrent publishes, conflicting serials, bounds, fleets, key
rotation and encrypted signing keys on the control node and the controllers."""

import json
import multiprocessing
import os
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import release as bundle_release

NOW = 1795946400  # 2026-11-29T10:00:00Z
DAY = 86400
RULESETS = {"web-01": "#!/usr/sbin/nft -f\n# web\n"}
MODES = {"web-01": "enforce"}


def _key(passphrase=None):
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _sign(state, key, digest="d1", now=NOW, **kwargs):
    return bundle_release.sign_release(str(state), key, RULESETS, MODES, digest, 7 * DAY, 3 * DAY, now=now, **kwargs)


def _slow_publish(state, key, digest, results):
    """One publish whose signing takes long enough for another to start meanwhile (the race window)."""
    real = bundle.make_envelope

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)
    bundle.make_envelope = slow
    info = _sign(state, key, digest=digest)[1]
    results.put((digest, info["serial"], open(info["archive"], "rb").read()))


def test_two_concurrent_publishes_never_sign_one_serial_twice(tmp_path):
    key = _key()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_slow_publish, args=(tmp_path, key, digest, results)) for digest in ("a", "b")]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=20) for _worker in workers)
    for worker in workers:
        worker.join(10)
    assert sorted(serial for _digest, serial, _data in outcomes) == [1, 2]
    state = json.loads((tmp_path / "state.json").read_text())
    last = max(outcomes, key=lambda item: item[1])
    assert state["serial"] == 2 and state["policy_digest"] == last[0]
    assert (tmp_path / "releases" / "2.json").read_bytes() == last[2]


def test_controller_refuses_a_second_release_with_the_same_serial(tmp_path):
    key = _key()
    public = bundle.public_key_pem(key)
    first = open(_sign(tmp_path / "a", key, digest="a")[1]["archive"], "rb").read()
    other = open(_sign(tmp_path / "b", key, digest="b")[1]["archive"], "rb").read()  # the race, before the lock
    ctl = str(tmp_path / "ctl")
    meta, bundles = bundle_release.load_archive(first, public, NOW)
    assert bundle_release.install_release(ctl, meta, bundles, gid=os.getgid()) == (True, None)
    meta, bundles = bundle_release.load_archive(other, public, NOW)
    with pytest.raises(bundle_release.ReleaseError) as err:
        bundle_release.install_release(ctl, meta, bundles, gid=os.getgid())
    assert err.value.kind == "conflict" and "two publishes signed one serial" in str(err.value)
    served = open(os.path.join(ctl, "current", ".release.json")).read()
    assert json.loads(served)["policy_digest"] == "a"


def test_validity_beyond_the_bound_is_refused_at_publish(tmp_path):
    with pytest.raises(bundle_release.ReleaseError, match="longer than the bound of 2592000 s"):
        bundle_release.sign_release(str(tmp_path), _key(), RULESETS, MODES, "d", 31 * DAY, DAY, now=NOW)
    with pytest.raises(bundle_release.ReleaseError, match="bound of 86400 s"):
        _sign(tmp_path, _key(), max_validity=DAY)


def test_release_for_another_fleet_is_refused_by_the_controller(tmp_path):
    key = _key()
    data = open(_sign(tmp_path, key, fleet="stage")[1]["archive"], "rb").read()
    with pytest.raises(bundle_release.ReleaseError) as err:
        bundle_release.load_archive(data, bundle.public_key_pem(key), NOW, fleet="prod")
    assert err.value.kind == "fleet"
    assert bundle_release.load_archive(data, bundle.public_key_pem(key), NOW, fleet="stage")[0]["fleet"] == "stage"


def test_changing_the_fleet_signs_a_new_release(tmp_path):
    key = _key()
    _sign(tmp_path, key)
    changed, info = _sign(tmp_path, key, fleet="prod")
    assert changed and info["serial"] == 2 and info["reason"] == "fleet or bundle format changed"


def test_encrypted_key_and_rotation_endorsed_by_the_previous_key(tmp_path):
    old, new = _key("pw"), _key("pw")
    with pytest.raises(bundle_release.ReleaseError, match="needs its passphrase"):
        _sign(tmp_path, old)
    _sign(tmp_path, old, passphrase="pw")
    changed, info = _sign(tmp_path, new, passphrase="pw", endorsing_key=old, overlap=3600, now=NOW + 60)
    assert changed and info["reason"] == "signing key changed"
    archive = json.loads(open(info["archive"], "rb").read())
    # a reader that still trusts only the old key accepts the release and learns the end of the overlap
    item = bundle.verify(archive["bundles"]["web-01"].encode(), bundle.public_key_pem(old, "pw"), "web-01", None,
                         NOW + 120)
    assert item.key_id == info["key_id"] and item.endorsement.endorser_until == NOW + 60 + 3600
    # the endorsement is made once per rotation: a renewal carries the same one
    again = _sign(tmp_path, new, digest="d2", passphrase="pw", endorsing_key=old, overlap=3600, now=NOW + 600)[1]
    later = json.loads(open(again["archive"], "rb").read())["bundles"]["web-01"]
    assert json.loads(later)["endorsement"] == json.loads(archive["bundles"]["web-01"])["endorsement"]
    assert oct(os.stat(tmp_path / "endorsement.json").st_mode & 0o777) == "0o600"
