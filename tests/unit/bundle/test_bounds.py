"""Bounded signed state (issue 15 items 4 and 13): what a leaked key, another fleet or a rotation can do to a reader.

Each test states the attack; before the bounds, ``verify`` accepted every one of these bundles.
"""

import base64
import datetime
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle

RULESET = "#!/usr/sbin/nft -f\ntable inet mseg {}\ndelete table inet mseg\ntable inet mseg {\n}\n"
CREATED = "2026-11-29T10:00:00Z"
UNTIL = "2026-12-06T10:00:00Z"
NOW = datetime.datetime(2026, 11, 29, 10, 5, tzinfo=datetime.timezone.utc)


def _keypair(passphrase=None):
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return private, bundle.public_key_pem(private, passphrase)


def _raw_envelope(keys, until=UNTIL, passphrase=None, **fields):
    """A validly signed envelope with payload fields as given (bypasses make_payload's signer-side bounds)."""
    payload = {"format": 2, "fleet": "default", "host": "web-01", "serial": 7, "policy_digest": "d",
               "mode": "enforce", "created_at": CREATED, "valid_until": until, "ruleset": RULESET,
               "ruleset_sha256": hashlib.sha256(RULESET.encode()).hexdigest()}
    payload.update(fields)
    data = bundle.canonical_json(payload)
    return bundle.envelope(data, bundle.sign(data, keys[0], passphrase), bundle.key_id(keys[1]))


def _kind(*args, **kwargs):
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(*args, **kwargs)
    return err.value.kind, err.value.reason


def test_leaked_key_cannot_sign_far_future_validity():
    keys = _keypair()
    env = _raw_envelope(keys, until="9999-12-31T00:00:00Z")
    kind, reason = _kind(env, keys[1], "web-01", None, NOW)
    assert kind == "bounds" and "longer than the bound of 2592000 s" in reason
    # the bound is the reader's, and the signer refuses to sign beyond it too
    with pytest.raises(ValueError, match="longer than the bound"):
        bundle.make_payload("web-01", 1, "d", "enforce", RULESET, CREATED, "2027-01-29T10:00:00Z")
    with pytest.raises(ValueError, match="longer than the bound of 86400 s"):
        bundle.make_payload("web-01", 1, "d", "enforce", RULESET, CREATED, UNTIL, max_validity=86400)


def test_leaked_key_cannot_jump_the_serial():
    keys = _keypair()
    kid = bundle.key_id(keys[1])
    huge = _raw_envelope(keys, serial=10 ** 30)
    kind, reason = _kind(huge, keys[1], "web-01", {kid: 7}, NOW)
    assert kind == "bounds" and "jumps more than 1000000" in reason
    assert bundle.verify(_raw_envelope(keys, serial=7 + 10 ** 6), keys[1], "web-01", {kid: 7}, NOW).serial == 7 + 10 ** 6
    assert _kind(_raw_envelope(keys, serial=8 + 10 ** 6), keys[1], "web-01", {kid: 7}, NOW)[0] == "bounds"


def test_bundle_of_another_fleet_is_refused():
    keys = _keypair()  # the same key trusted by stage and prod: the fleet still tells them apart
    stage = bundle.make_envelope("web-01", 7, "d", "enforce", RULESET, CREATED, UNTIL, keys[0], fleet="stage")
    kind, reason = _kind(stage, keys[1], "web-01", None, NOW, fleet="prod")
    assert kind == "fleet" and "'stage'" in reason
    assert bundle.verify(stage, keys[1], "web-01", None, NOW, fleet="stage").fleet == "stage"
    with pytest.raises(ValueError, match="fleet name 'Prod!' is not valid"):
        bundle.make_payload("web-01", 1, "d", "enforce", RULESET, CREATED, UNTIL, fleet="Prod!")


def test_format_1_bundles_on_hosts_read_as_the_default_fleet():
    keys = _keypair()
    legacy = json.loads(_raw_envelope(keys, format=1))
    payload = json.loads(base64.b64decode(legacy["payload"]))
    del payload["fleet"]
    data = bundle.canonical_json(dict(payload, format=1))
    env = bundle.envelope(data, bundle.sign(data, keys[0]), bundle.key_id(keys[1]))
    assert bundle.verify(env, keys[1], "web-01", None, NOW).fleet == "default"
    assert _kind(env, keys[1], "web-01", None, NOW, fleet="prod")[0] == "fleet"


def test_replay_state_is_per_key_so_a_rotation_recovers_from_a_leaked_key():
    old, new = _keypair(), _keypair()
    old_id, new_id = bundle.key_id(old[1]), bundle.key_id(new[1])
    # the leaked old key pushed the serial as far as the step allows
    state = {old_id: 7 + 10 ** 6}
    trusted = new[1] + old[1]  # the new key installed beside the old one (the overlap)
    item = bundle.verify(_raw_envelope(new, serial=8), trusted, "web-01", state, NOW)
    assert item.key_id == new_id and item.serial == 8
    state[new_id] = 8
    assert _kind(_raw_envelope(new, serial=8), trusted, "web-01", state, NOW)[0] == "replay"
    assert _kind(_raw_envelope(old, serial=7 + 10 ** 6), trusted, "web-01", state, NOW)[0] == "replay"


def test_old_key_endorses_new_key_with_an_overlap():
    old, new = _keypair("old-pass"), _keypair()
    endorsement = bundle.endorse(old[0], new[1], CREATED, "2026-12-01T10:00:00Z", passphrase="old-pass")
    env = bundle.make_envelope("web-01", 8, "d", "enforce", RULESET, CREATED, UNTIL, new[0],
                               endorsement=endorsement)
    # an agent that trusts only the old key accepts the new key's bundle and learns when the old key retires
    item = bundle.verify(env, old[1], "web-01", {bundle.key_id(old[1]): 7}, NOW)
    assert item.key_id == bundle.key_id(new[1])
    assert item.endorsement == bundle.Endorsement(bundle.key_id(old[1]), bundle.key_id(new[1]),
                                                  bundle.parse_time("2026-12-01T10:00:00Z"))
    # a reader that trusts both keys (the overlap) learns the same; one that trusts only the new key ignores it
    assert bundle.verify(env, old[1] + new[1], "web-01", None, NOW).endorsement == item.endorsement
    assert bundle.verify(env, new[1], "web-01", None, NOW).endorsement is None
    retired = {item.endorsement.endorser: item.endorsement.endorser_until}
    old_env = _raw_envelope(old, serial=9, passphrase="old-pass")
    assert bundle.verify(old_env, old[1], "web-01", None, NOW, retired=retired).serial == 9  # inside the overlap
    after = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc)
    assert _kind(old_env, old[1], "web-01", None, after, retired=retired)[0] == "signature"


def test_endorsement_by_an_untrusted_or_forged_key_is_a_signature_mismatch():
    old, new, attacker = _keypair(), _keypair(), _keypair()
    by_attacker = bundle.endorse(attacker[0], new[1], CREATED, UNTIL)
    env = bundle.make_envelope("web-01", 8, "d", "enforce", RULESET, CREATED, UNTIL, new[0], endorsement=by_attacker)
    assert _kind(env, old[1], "web-01", None, NOW)[0] == "signature"
    # an endorsement of the new key cannot carry a bundle signed by a third key
    genuine = bundle.endorse(old[0], new[1], CREATED, UNTIL)
    env = bundle.make_envelope("web-01", 8, "d", "enforce", RULESET, CREATED, UNTIL, attacker[0], endorsement=genuine)
    assert _kind(env, old[1], "web-01", None, NOW)[0] == "signature"
    # nor one for another fleet
    stage = bundle.endorse(old[0], new[1], CREATED, UNTIL, fleet="stage")
    env = bundle.make_envelope("web-01", 8, "d", "enforce", RULESET, CREATED, UNTIL, new[0], endorsement=stage)
    assert _kind(env, old[1], "web-01", None, NOW)[0] == "fleet"


def test_encrypted_signing_key_needs_its_passphrase():
    keys = _keypair("s3cret")
    with pytest.raises(ValueError, match="encrypted and needs its passphrase"):
        bundle.sign(b"x", keys[0])
    with pytest.raises(ValueError, match="passphrase is wrong"):
        bundle.sign(b"x", keys[0], "wrong")
    assert len(bundle.sign(b"x", keys[0], "s3cret")) == 64
