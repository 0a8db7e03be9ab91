"""Signed policy bundles: the signing side and the one verification path agents use."""

import base64
import datetime
import hashlib
import json
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle

RULESET = "#!/usr/sbin/nft -f\ntable inet mseg {}\ndelete table inet mseg\ntable inet mseg {\n}\n"
CREATED = "2026-11-29T10:00:00Z"
UNTIL = "2026-12-06T10:00:00Z"
NOW = datetime.datetime(2026, 11, 29, 10, 5, tzinfo=datetime.timezone.utc)


def _keypair():
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, bundle.public_key_pem(private)


@pytest.fixture(name="keys")
def fixture_keys():
    return _keypair()


def _env(keys, host="web-01", serial=7, mode="enforce", ruleset=RULESET, created=CREATED, until=UNTIL):
    return bundle.make_envelope(host, serial, "abc123", mode, ruleset, created, until, keys[0])


def _reseal(env, keys, **changes):
    """Rewrite payload fields and sign again with ``keys`` (a validly signed, semantically bad bundle)."""
    outer = json.loads(env)
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload.update(changes)
    data = bundle.canonical_json(payload)
    return bundle.envelope(data, bundle.sign(data, keys[0]), bundle.key_id(keys[1]))


def test_payload_is_canonical_json_with_the_contract_fields():
    data = bundle.make_payload("web-01", 3, "d1", "observe", RULESET, CREATED, UNTIL)
    fields = json.loads(data)
    assert data == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert fields == {
        "format": 2, "fleet": "default", "host": "web-01", "serial": 3, "policy_digest": "d1", "mode": "observe",
        "created_at": CREATED, "valid_until": UNTIL, "ruleset": RULESET,
        "ruleset_sha256": hashlib.sha256(RULESET.encode()).hexdigest(),
    }


def test_times_accept_datetimes_and_epochs():
    start = datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=datetime.timezone.utc)
    until = start.timestamp() + 3600 * 24 * 7
    data = bundle.make_payload("h", 1, "d", "enforce", RULESET, start, until)
    fields = json.loads(data)
    assert fields["created_at"] == CREATED and fields["valid_until"] == UNTIL


def test_envelope_round_trip(keys):
    env = _env(keys)
    outer = json.loads(env)
    assert set(outer) == {"format", "key_id", "payload", "signature"}
    raw = serialization.load_pem_public_key(keys[1]).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert outer["key_id"] == hashlib.sha256(raw).hexdigest()[:16]
    assert len(base64.b64decode(outer["signature"])) == 64
    result = bundle.verify(env, keys[1], "web-01", 6, NOW)
    assert result.serial == 7 and result.mode == "enforce" and result.ruleset == RULESET
    assert result.key_id == outer["key_id"] and result.policy_digest == "abc123"
    assert bundle.verify(env, keys[1], "web-01", None, NOW.timestamp()).host == "web-01"


def test_openssl_generated_key_signs_the_same_way(tmp_path, keys):
    """community.crypto's openssl_privatekey type=Ed25519 writes the PKCS#8 PEM openssl does."""
    path = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True)
    private = path.read_bytes()
    env = bundle.make_envelope("web-01", 1, "d", "enforce", RULESET, CREATED, UNTIL, private)
    assert bundle.verify(env, bundle.public_key_pem(private), "web-01", 0, NOW).serial == 1
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(env, keys[1], "web-01", 0, NOW)
    assert err.value.kind == "signature"


@pytest.mark.parametrize("change", ["payload", "signature", "ruleset"])
def test_tampering_is_a_signature_mismatch(keys, change):
    outer = json.loads(_env(keys))
    if change == "signature":
        sig = bytearray(base64.b64decode(outer["signature"]))
        sig[0] ^= 1
        outer["signature"] = base64.b64encode(bytes(sig)).decode()
    else:
        payload = json.loads(base64.b64decode(outer["payload"]))
        if change == "payload":
            payload["mode"] = "bypass"
        else:
            payload["ruleset"] = RULESET + "# extra\n"
            payload["ruleset_sha256"] = hashlib.sha256(payload["ruleset"].encode()).hexdigest()
        outer["payload"] = base64.b64encode(bundle.canonical_json(payload)).decode()
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(json.dumps(outer).encode(), keys[1], "web-01", 0, NOW)
    assert err.value.kind == "signature"
    assert "signature mismatch" in str(err.value)


def test_other_key_is_a_signature_mismatch_even_with_a_forged_key_id(keys):
    other = _keypair()
    env = _env(other)
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(env, keys[1], "web-01", 0, NOW)
    assert err.value.kind == "signature" and "not by a trusted key" in err.value.reason
    outer = json.loads(env)
    outer["key_id"] = bundle.key_id(keys[1])
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(json.dumps(outer), keys[1], "web-01", 0, NOW)
    assert err.value.kind == "signature" and "does not match" in err.value.reason


def test_another_hosts_bundle_is_refused(keys):
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(_env(keys, host="db-01"), keys[1], "web-01", 0, NOW)
    assert err.value.kind == "host" and "'db-01'" in err.value.reason


@pytest.mark.parametrize("last", [7, 8])
def test_replay_of_an_old_or_equal_serial_is_refused(keys, last):
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(_env(keys, serial=7), keys[1], "web-01", last, NOW)
    assert err.value.kind == "replay"


def test_validity_window(keys):
    env = _env(keys)
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(env, keys[1], "web-01", 0, "2026-12-06T10:00:00Z")
    assert err.value.kind == "expired"
    assert bundle.verify(env, keys[1], "web-01", 0, "2026-11-29T09:55:01Z").serial == 7
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(env, keys[1], "web-01", 0, "2026-11-29T09:54:59Z")
    assert err.value.kind == "not_yet_valid"
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(env, keys[1], "web-01", 0, "2026-11-29T09:59:59Z", max_skew=0)
    assert err.value.kind == "not_yet_valid"


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b"\xff\xfe", b'{"format":1}',
    b'{"format":2,"key_id":"x","payload":"","signature":""}',
    b'{"format":true,"key_id":"x","payload":"","signature":""}',
])
def test_malformed_envelopes(keys, data):
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(data, keys[1], "web-01", 0, NOW)
    assert err.value.kind == "format"


def test_bad_base64_is_format(keys):
    outer = json.loads(_env(keys))
    outer["payload"] = "!!!"
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(json.dumps(outer), keys[1], "web-01", 0, NOW)
    assert err.value.kind == "format"


@pytest.mark.parametrize("changes", [
    {"serial": "7"}, {"serial": True}, {"serial": 0}, {"mode": "open"}, {"valid_until": "tomorrow"},
    {"ruleset_sha256": "0" * 64}, {"extra": 1}, {"format": 3}, {"format": 1},
])
def test_signed_but_malformed_payloads(keys, changes):
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(_reseal(_env(keys), keys, **changes), keys[1], "web-01", 0, NOW)
    assert err.value.kind == "format"


@pytest.mark.parametrize("args,message", [
    (("bad host!", 1, "d", "enforce", RULESET, CREATED, UNTIL), "host"),
    (("h", 0, "d", "enforce", RULESET, CREATED, UNTIL), "serial"),
    (("h", True, "d", "enforce", RULESET, CREATED, UNTIL), "serial"),
    (("h", 1, "", "enforce", RULESET, CREATED, UNTIL), "policy_digest"),
    (("h", 1, "d", "allow", RULESET, CREATED, UNTIL), "mode"),
    (("h", 1, "d", "enforce", "", CREATED, UNTIL), "empty"),
    (("h", 1, "d", "enforce", RULESET, UNTIL, CREATED), "later"),
    (("h", 1, "d", "enforce", RULESET, "2026-11-29 10:00", UNTIL), "YYYY"),
])
def test_make_payload_refuses_what_it_cannot_sign(args, message):
    with pytest.raises(ValueError, match=message):
        bundle.make_payload(*args)


def test_keys_of_the_wrong_kind_are_refused(tmp_path):
    path = tmp_path / "ec.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(path)], check=True)
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        bundle.sign(b"x", path.read_bytes())
    with pytest.raises(ValueError, match="not a PEM private key"):
        bundle.sign(b"x", b"garbage")
    with pytest.raises(ValueError, match="the verification key is not a PEM public key"):
        bundle.key_id(b"garbage")
    ec_public = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout"], check=True,
                               stdout=subprocess.PIPE).stdout
    with pytest.raises(ValueError, match="the verification key is not an Ed25519 key"):
        bundle.key_id(ec_public)


def test_without_cryptography_every_signing_and_verifying_path_says_how_to_install_it(monkeypatch, keys):
    assert bundle.missing_cryptography() is None
    monkeypatch.setattr(bundle, "CRYPTOGRAPHY_IMPORT_ERROR", ImportError("No module named 'cryptography'"))
    message = bundle.missing_cryptography()
    assert message.startswith("signed bundles need the Python library cryptography in ")
    assert message.endswith("(Debian: apt install python3-cryptography): No module named 'cryptography'")
    for call in (lambda: bundle.sign(b"x", keys[0]), lambda: bundle.key_id(keys[1]),
                 lambda: bundle.public_key_pem(keys[0])):
        with pytest.raises(ImportError) as err:
            call()
        assert str(err.value) == message


def test_unknown_error_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown BundleError kind"):
        raise bundle.BundleError("x", "other")


def test_mode_rulesets_travel_signed():
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    others = {"observe": "table inet mseg {}\n# observe\n"}
    raw = bundle.make_envelope("web-01", 3, "d" * 64, "enforce", "table inet mseg {}\n", 1_800_000_000,
                               1_800_003_600, key, others)
    item = bundle.verify(raw, bundle.public_key_pem(key), "web-01", None, 1_800_000_100)
    assert item.mode_rulesets == others
    # changing them breaks the signature
    outer = json.loads(raw)
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["mode_rulesets"]["observe"] = "table inet mseg {}\n# forged\n"
    outer["payload"] = base64.b64encode(bundle.canonical_json(payload)).decode()
    with pytest.raises(bundle.BundleError) as raised:
        bundle.verify(json.dumps(outer).encode(), bundle.public_key_pem(key), "web-01", None, 1_800_000_100)
    assert raised.value.kind == "signature"
    with pytest.raises(ValueError, match="must map observe/enforce"):
        bundle.make_payload("web-01", 3, "d" * 64, "enforce", "x", 1_800_000_000, 1_800_003_600, {"bypass": "x"})
