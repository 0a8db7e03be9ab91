"""Releases: signed once on the control node (idempotently), installed atomically on a controller."""

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import release as bundle_release

NOW = 1795946400  # 2026-11-29T10:00:00Z
DAY = 86400
RULESETS = {"web-01": "#!/usr/sbin/nft -f\n# web\n", "db-01": "#!/usr/sbin/nft -f\n# db\n"}
MODES = {"web-01": "enforce", "db-01": "observe"}


def _key():
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(name="key")
def fixture_key():
    return _key()


def _sign(state, key, now=NOW, rulesets=None, modes=None, digest="d1", **kwargs):
    return bundle_release.sign_release(str(state), key, rulesets or RULESETS, modes or MODES, digest,
                                       7 * DAY, 3 * DAY, now=now, **kwargs)


def test_first_release_then_idempotent(tmp_path, key):
    changed, info = _sign(tmp_path, key)
    assert changed and info["serial"] == 1 and info["reason"] == "first release"
    archive = json.loads(open(info["archive"], "rb").read())
    assert sorted(archive["bundles"]) == ["db-01", "web-01"]
    assert oct(os.stat(info["archive"]).st_mode & 0o777) == "0o600"
    before = open(info["archive"], "rb").read()
    changed, again = _sign(tmp_path, key, now=NOW + DAY)
    assert not changed and again["serial"] == 1 and again["reason"] == "unchanged"
    assert open(info["archive"], "rb").read() == before


@pytest.mark.parametrize("change,reason", [
    ({"rulesets": dict(RULESETS, **{"web-01": "#!/usr/sbin/nft -f\n# web v2\n"})}, "policy changed"),
    ({"modes": dict(MODES, **{"db-01": "enforce"})}, "policy changed"),
    ({"digest": "d2"}, "policy changed"),
    ({"now": NOW + 5 * DAY}, "renewal"),
])
def test_a_change_signs_the_next_serial(tmp_path, key, change, reason):
    _sign(tmp_path, key)
    changed, info = _sign(tmp_path, key, **change)
    assert changed and info["serial"] == 2 and info["reason"].startswith(reason)


def test_new_key_and_check_mode(tmp_path, key):
    _sign(tmp_path, key)
    changed, info = _sign(tmp_path, _key(), check_mode=True)
    assert changed and info["serial"] == 2 and info["reason"] == "signing key changed"
    assert not os.path.exists(info["archive"])


def test_old_archives_are_pruned(tmp_path, key):
    for step in range(4):
        _sign(tmp_path, key, digest="d%d" % step, keep=2)
    assert sorted(os.listdir(tmp_path / "releases")) == ["3.json", "4.json"]


def test_nothing_to_sign_is_an_error(tmp_path, key):
    with pytest.raises(bundle_release.ReleaseError, match="no host"):
        bundle_release.sign_release(str(tmp_path), key, {}, {}, "d", 10, 5)
    with pytest.raises(bundle_release.ReleaseError, match="no mode"):
        _sign(tmp_path, key, modes={"web-01": "enforce"})


def _archive(tmp_path, key, **kwargs):
    info = _sign(tmp_path / "cn", key, **kwargs)[1]
    return open(info["archive"], "rb").read()


def _install(tmp_path, data, key, now=NOW, **kwargs):
    meta, bundles = bundle_release.load_archive(data, bundle.public_key_pem(key), now)
    return bundle_release.install_release(str(tmp_path / "ctl"), meta, bundles, gid=os.getgid(), **kwargs)


def test_install_switches_atomically_and_is_idempotent(tmp_path, key):
    first = _archive(tmp_path, key)
    assert _install(tmp_path, first, key) == (True, None)
    ctl = tmp_path / "ctl"
    assert os.readlink(str(ctl / "current")) == "releases/1"
    names = sorted(os.listdir(str(ctl / "current")))
    assert names == [".release.json", "db-01.json", "web-01.json"]
    stat = os.stat(str(ctl / "current" / "web-01.json"))
    assert int(stat.st_mtime) == NOW and oct(stat.st_mode & 0o777) == "0o640"
    served = open(str(ctl / "current" / "web-01.json"), "rb").read()
    assert bundle.verify(served, bundle.public_key_pem(key), "web-01", 0, NOW).serial == 1
    assert _install(tmp_path, first, key) == (False, 1)
    second = _archive(tmp_path, key, digest="d2", now=NOW + 60)
    assert _install(tmp_path, second, key, now=NOW + 60) == (True, 1)
    assert os.readlink(str(ctl / "current")) == "releases/2"
    assert not [n for n in os.listdir(str(ctl / "releases")) if n.startswith(".")]


def test_damaged_release_directory_is_rewritten(tmp_path, key):
    data = _archive(tmp_path, key)
    _install(tmp_path, data, key)
    path = tmp_path / "ctl" / "releases" / "1" / "web-01.json"
    path.write_bytes(b"{}")
    assert _install(tmp_path, data, key) == (True, 1)
    assert bundle.verify(path.read_bytes(), bundle.public_key_pem(key), "web-01", 0, NOW).serial == 1


def test_rollback_is_refused(tmp_path, key):
    old = _archive(tmp_path, key)
    new = _archive(tmp_path, key, digest="d2")
    _install(tmp_path, new, key)
    with pytest.raises(bundle_release.ReleaseError) as err:
        _install(tmp_path, old, key)
    assert err.value.kind == "replay"
    assert os.readlink(str(tmp_path / "ctl" / "current")) == "releases/2"


def test_forged_or_misfiled_bundles_are_refused_before_anything_is_written(tmp_path, key):
    data = json.loads(_archive(tmp_path, key))
    other = _key()
    with pytest.raises(bundle_release.ReleaseError) as err:
        bundle_release.load_archive(json.dumps(data), bundle.public_key_pem(other), NOW)
    assert err.value.kind == "signature"
    swapped = dict(data, bundles={"web-01": data["bundles"]["db-01"], "db-01": data["bundles"]["web-01"]})
    with pytest.raises(bundle_release.ReleaseError) as err:
        bundle_release.load_archive(json.dumps(swapped), bundle.public_key_pem(key), NOW)
    assert err.value.kind == "host"
    outer = json.loads(data["bundles"]["web-01"])
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["mode"] = "bypass"
    outer["payload"] = base64.b64encode(bundle.canonical_json(payload)).decode()
    data["bundles"]["web-01"] = json.dumps(outer)
    with pytest.raises(bundle_release.ReleaseError, match="signature mismatch"):
        bundle_release.load_archive(json.dumps(data), bundle.public_key_pem(key), NOW)
    with pytest.raises(bundle_release.ReleaseError) as err:
        bundle_release.load_archive(b"[1]", bundle.public_key_pem(key), NOW)
    assert err.value.kind == "format"
    assert not os.path.exists(str(tmp_path / "ctl"))


def test_expired_release_is_refused(tmp_path, key):
    with pytest.raises(bundle_release.ReleaseError) as err:
        bundle_release.load_archive(_archive(tmp_path, key), bundle.public_key_pem(key), NOW + 8 * DAY)
    assert err.value.kind == "expired"
