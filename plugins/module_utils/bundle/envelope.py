# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signed policy bundles: what the control node signs, the controllers serve and the agents verify.

Plain Python (no Ansible imports), importable on Python 3.8+ with only ``cryptography``. The control
node signs with ``make_payload`` + ``sign`` + ``envelope``; an agent (and every test) checks with
``verify``, the one and only verification path. Format (docs/bundles.md):

* payload: canonical JSON (sorted keys, no spaces, UTF-8) of ``format`` (2), ``fleet``, ``host``, ``serial``,
  ``policy_digest``, ``mode``, ``created_at``, ``valid_until``, ``ruleset`` and ``ruleset_sha256``; a format 1
  payload (before fleets) has no ``fleet`` and belongs to ``contract.DEFAULT_FLEET``;
* signature: raw Ed25519 (64 bytes) over the payload bytes, detached (not inside the payload);
* envelope: one JSON file per host carrying ``format``, ``key_id``, base64 ``payload`` and base64
  ``signature``, so a reader never pairs a payload with another publish's signature; during a key rotation
  also ``endorsement``: the new key, endorsed by the old one (``endorse``).

Signed state is bounded, so that a leaked signing key cannot lock agents out of every future release: a bundle's
validity window is at most ``MAX_VALIDITY``, its serial at most ``MAX_SERIAL_STEP`` above the last serial the
reader accepted from the same key, and replay state is kept per key, so a rotated key starts a fresh history.
"""

from __future__ import absolute_import, division, print_function

import base64
import binascii
import calendar
import collections
import datetime
import hashlib
import json
import re
import sys

from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import DEFAULT_FLEET, FLEET_RE
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
except ImportError as exc:  # reported by require_cryptography(), so importing this module never fails
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

FORMAT = 2
LEGACY_FORMAT = 1               # payloads signed before fleets: no ``fleet`` field, read as the default fleet
ENVELOPE_FORMAT = 1
ENDORSEMENT_FORMAT = 1
MAX_VALIDITY = 30 * 86400       # the longest validity window a signer may sign and a reader accepts
MAX_SERIAL_STEP = 10 ** 6       # the largest serial increase a reader accepts from one key
MODES = ("observe", "enforce", "bypass")
KINDS = ("signature", "fleet", "host", "replay", "bounds", "expired", "not_yet_valid", "format")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DEFAULT_MAX_SKEW = 300
_EPOCH = datetime.datetime(1970, 1, 1)
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
_LEGACY_PAYLOAD_KEYS = frozenset(("format", "host", "serial", "policy_digest", "mode", "created_at",
                                  "valid_until", "ruleset", "ruleset_sha256"))
_PAYLOAD_KEYS = _LEGACY_PAYLOAD_KEYS | {"fleet"}
# The host's ruleset rendered for the other modes (observe, enforce), so its agent can switch mode locally.
_OPTIONAL_PAYLOAD_KEYS = frozenset(("mode_rulesets",))
LOCAL_MODES = ("observe", "enforce")
_ENVELOPE_KEYS = frozenset(("format", "key_id", "payload", "signature"))
_ENDORSEMENT_KEYS = frozenset(("format", "fleet", "endorser", "key", "key_id", "created_at", "endorser_until"))

Bundle = collections.namedtuple("Bundle", ("format", "host", "serial", "policy_digest", "mode", "created_at",
                                           "valid_until", "ruleset", "ruleset_sha256", "key_id", "mode_rulesets",
                                           "fleet", "endorsement"),
                                defaults=(None, DEFAULT_FLEET, None))
# What a verified endorsement said: ``endorser`` (key id of the old key) accepted until ``endorser_until``.
Endorsement = collections.namedtuple("Endorsement", ("endorser", "key_id", "endorser_until"))


class BundleError(MsegError):
    """A bundle that must not be used. ``kind`` is one of ``KINDS``; ``reason`` is a complete sentence.

    Log ``kind == "signature"`` as "signature mismatch": it means a bad signature or an unknown key.
    """

    def __init__(self, reason, kind):
        if kind not in KINDS:
            raise ValueError("unknown BundleError kind %r" % (kind,))
        self.reason = reason
        self.kind = kind
        super(BundleError, self).__init__(reason)


def format_time(value):
    """Return ``value`` (an aware or naive-UTC datetime, epoch seconds, or the string form) as ``...Z``."""
    return _format_time(value, "time")


def parse_time(text):
    """Return epoch seconds (int) for a ``YYYY-MM-DDTHH:MM:SSZ`` string; ValueError otherwise."""
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise ValueError("%r is not a UTC time written YYYY-MM-DDTHH:MM:SSZ" % (text,))
    return calendar.timegm(datetime.datetime.strptime(text, TIME_FORMAT).timetuple())


def _epoch(value, what):
    if isinstance(value, bool):
        raise ValueError("%s must be a datetime, epoch seconds or YYYY-MM-DDTHH:MM:SSZ, not %r" % (what, value))
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return calendar.timegm(value.timetuple())
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        return parse_time(value)
    raise ValueError("%s must be a datetime, epoch seconds or YYYY-MM-DDTHH:MM:SSZ, not %r" % (what, value))


def _format_time(value, what):
    return (_EPOCH + datetime.timedelta(seconds=_epoch(value, what))).strftime(TIME_FORMAT)


def canonical_json(data):
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8 (non-ASCII kept as is)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _valid_mode_rulesets(value):
    return isinstance(value, dict) and set(value) <= set(LOCAL_MODES) and all(
        isinstance(text, str) and text for text in value.values())


def check_fleet(fleet):
    """``fleet`` when it is a fleet name (``contract.FLEET_RE``); ValueError saying how to fix it otherwise."""
    if not isinstance(fleet, str) or not FLEET_RE.match(fleet):
        raise ValueError("fleet name %r is not valid: lower-case letters, digits and '-', at most 63 characters "
                         "(set the inventory variable mseg_fleet)" % (fleet,))
    return fleet


def make_payload(host, serial, policy_digest, mode, ruleset, created_at, valid_until, mode_rulesets=None,
                 fleet=DEFAULT_FLEET, max_validity=MAX_VALIDITY):
    """Return the canonical payload bytes for one host. Raises ValueError on input that cannot be signed.

    ``mode_rulesets`` optionally maps observe/enforce to the host's ruleset rendered in that mode. The validity
    window may not exceed ``max_validity`` seconds (at most ``MAX_VALIDITY``: readers refuse longer ones).
    """
    check_fleet(fleet)
    if not isinstance(host, str) or not _HOST_RE.match(host):
        raise ValueError("host %r is not an inventory host name" % (host,))
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise ValueError("serial must be a positive integer, not %r" % (serial,))
    if not isinstance(policy_digest, str) or not policy_digest:
        raise ValueError("policy_digest must be a non-empty string")
    if mode not in MODES:
        raise ValueError("mode must be one of %s, not %r" % (", ".join(MODES), mode))
    if not isinstance(ruleset, str) or not ruleset:
        raise ValueError("the ruleset for %s is empty" % host)
    created = _epoch(created_at, "created_at")
    until = _epoch(valid_until, "valid_until")
    if until <= created:
        raise ValueError("valid_until (%s) must be later than created_at (%s)"
                         % (_format_time(until, "valid_until"), _format_time(created, "created_at")))
    if until - created > min(max_validity, MAX_VALIDITY):
        raise ValueError("the validity window of %d s is longer than the bound of %d s; sign for a shorter time "
                         "(controller_bundle_validity)" % (until - created, min(max_validity, MAX_VALIDITY)))
    if mode_rulesets and not _valid_mode_rulesets(mode_rulesets):
        raise ValueError("mode_rulesets for %s must map observe/enforce to non-empty rulesets" % host)
    payload = {
        "format": FORMAT,
        "fleet": fleet,
        "host": host,
        "serial": serial,
        "policy_digest": policy_digest,
        "mode": mode,
        "created_at": _format_time(created, "created_at"),
        "valid_until": _format_time(until, "valid_until"),
        "ruleset": ruleset,
        "ruleset_sha256": hashlib.sha256(ruleset.encode("utf-8")).hexdigest(),
    }
    if mode_rulesets:
        payload["mode_rulesets"] = dict(mode_rulesets)
    return canonical_json(payload)


def missing_cryptography():
    """Why this Python cannot sign or verify bundles (the library ``cryptography`` is missing) and how to fix it, or
    None when it can. The one check of the library: the modules and ``require_cryptography`` ask it."""
    if CRYPTOGRAPHY_IMPORT_ERROR is None:
        return None
    return ("signed bundles need the Python library cryptography in %s (Debian: apt install python3-cryptography): %s"
            % (sys.executable or "this Python", CRYPTOGRAPHY_IMPORT_ERROR))


def require_cryptography():
    """Raise ImportError with the fix when the Python ``cryptography`` library is missing."""
    problem = missing_cryptography()
    if problem:
        raise ImportError(problem)


def _load_key(pem, private, passphrase=None):
    """The Ed25519 key in ``pem``: the signing (private, PKCS#8, encrypted with ``passphrase`` when given) key or
    the verification (public) key."""
    require_cryptography()
    if private:
        what, form, expected = "signing key", "a PEM private key", ed25519.Ed25519PrivateKey
    else:
        what, form, expected = "verification key", "a PEM public key", ed25519.Ed25519PublicKey
    try:
        key = (serialization.load_pem_private_key(_bytes(pem), password=_bytes(passphrase) if passphrase else None)
               if private else serialization.load_pem_public_key(_bytes(pem)))
    except TypeError as exc:
        if private and passphrase:
            raise ValueError("the %s is not encrypted, but a passphrase was given (%s)" % (what, exc))
        if private:
            raise ValueError("the %s is encrypted and needs its passphrase (controller_signing_key_passphrase)"
                             % what)
        raise ValueError("the %s is not %s (%s)" % (what, form, exc))
    except ValueError as exc:
        raise ValueError("the %s is not %s, or the passphrase is wrong (%s)" % (what, form, exc))
    if not isinstance(key, expected):
        raise ValueError("the %s is not an Ed25519 key" % what)
    return key


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


def _raw_public(key):
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _id_of(public_key):
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def public_key_pem(private_key_pem, passphrase=None):
    """Return the PEM (SubjectPublicKeyInfo) public key of an Ed25519 private key."""
    return _load_key(private_key_pem, True, passphrase).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key_pem_bytes):
    """First 16 hex digits of the sha256 of the raw 32-byte Ed25519 public key."""
    return _id_of(_load_key(public_key_pem_bytes, private=False))


_PEM_BLOCK_RE = re.compile(br"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def trusted_keys(public_keys_pem):
    """``{key_id: public key}`` of every PEM public key in ``public_keys_pem`` (one file may hold several: the
    current key and, during a rotation's overlap, the next one). ValueError when it holds none."""
    blocks = _PEM_BLOCK_RE.findall(_bytes(public_keys_pem or b""))
    if not blocks:
        raise ValueError("the verification key file holds no PEM public key")
    keys = {}
    for block in blocks:
        key = _load_key(block + b"\n", private=False)
        keys[_id_of(key)] = key
    return keys


def sign(payload, private_key_pem, passphrase=None):
    """Raw 64-byte Ed25519 signature of ``payload`` (bytes)."""
    return _load_key(private_key_pem, True, passphrase).sign(_bytes(payload))


def endorse(old_private_key_pem, new_public_key_pem, created_at, endorser_until, fleet=DEFAULT_FLEET,
            passphrase=None):
    """The old key's statement that the new key signs for ``fleet`` from now on: ``{"statement", "signature"}``
    (base64), carried in every envelope the new key signs during the rotation. A reader that trusts the old key
    then trusts the new one, and still accepts bundles of the old key until ``endorser_until`` (the overlap)."""
    check_fleet(fleet)
    old = _load_key(old_private_key_pem, True, passphrase)
    statement = canonical_json({
        "format": ENDORSEMENT_FORMAT, "fleet": fleet, "endorser": _id_of(old.public_key()),
        "key": base64.b64encode(_raw_public(_load_key(new_public_key_pem, private=False))).decode("ascii"),
        "key_id": key_id(new_public_key_pem), "created_at": _format_time(created_at, "created_at"),
        "endorser_until": _format_time(endorser_until, "endorser_until")})
    return {"statement": base64.b64encode(statement).decode("ascii"),
            "signature": base64.b64encode(old.sign(statement)).decode("ascii")}


def envelope(payload, signature, key_id_hex, endorsement=None):
    """The file a controller serves: canonical JSON with the base64 payload and detached signature."""
    data = {
        "format": ENVELOPE_FORMAT,
        "key_id": key_id_hex,
        "payload": base64.b64encode(_bytes(payload)).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    if endorsement:
        data["endorsement"] = endorsement
    return canonical_json(data)


def make_envelope(host, serial, policy_digest, mode, ruleset, created_at, valid_until, private_key_pem,
                  mode_rulesets=None, fleet=DEFAULT_FLEET, passphrase=None, endorsement=None,
                  max_validity=MAX_VALIDITY):
    """Payload, signature and envelope in one call (what the control node does for every host)."""
    payload = make_payload(host, serial, policy_digest, mode, ruleset, created_at, valid_until, mode_rulesets,
                           fleet, max_validity)
    return envelope(payload, sign(payload, private_key_pem, passphrase),
                    key_id(public_key_pem(private_key_pem, passphrase)), endorsement)


def _b64(text, what):
    if not isinstance(text, str):
        raise BundleError("the bundle's %s is not a base64 string" % what, "format")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BundleError("the bundle's %s is not valid base64" % what, "format")


def _json_object(data, what, keys, optional=frozenset(), formats=(FORMAT,)):
    try:
        value = json.loads(_bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError) as exc:
        raise BundleError("the %s is not UTF-8 JSON (%s)" % (what, exc), "format")
    if not isinstance(value, dict):
        raise BundleError("the %s is not a JSON object" % what, "format")
    if not keys <= set(value) <= keys | optional:
        raise BundleError("the %s has fields %s, expected %s" % (what, ", ".join(sorted(value)),
                                                                 ", ".join(sorted(keys))), "format")
    if isinstance(value["format"], bool) or value["format"] not in formats:
        raise BundleError("the %s has format %r; this reader understands format %s"
                          % (what, value["format"], " and ".join(str(f) for f in formats)), "format")
    return value


def _endorsed_key(data, trusted, fleet, now):
    """The public key an endorsement in an envelope vouches for, if a trusted key signed it for this fleet."""
    if not isinstance(data, dict) or set(data) != {"statement", "signature"}:
        raise BundleError("the bundle's endorsement is malformed", "format")
    statement = _b64(data["statement"], "endorsement statement")
    fields = _json_object(statement, "endorsement statement", _ENDORSEMENT_KEYS, formats=(ENDORSEMENT_FORMAT,))
    endorser = trusted.get(fields["endorser"]) if isinstance(fields["endorser"], str) else None
    if endorser is None:
        raise BundleError("the bundle's key is endorsed by key %r, which this reader does not trust "
                          "(signature mismatch)" % (fields["endorser"],), "signature")
    try:
        endorser.verify(_b64(data["signature"], "endorsement signature"), statement)
    except InvalidSignature:
        raise BundleError("the endorsement's signature does not match the trusted key %s (signature mismatch)"
                          % fields["endorser"], "signature")
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(_b64(fields["key"], "endorsed key"))
        until = parse_time(fields["endorser_until"])
        created = parse_time(fields["created_at"])
    except ValueError as exc:
        raise BundleError("the endorsement is malformed (%s)" % exc, "format")
    if _id_of(key) != fields["key_id"]:
        raise BundleError("the endorsement's key_id does not match its key", "format")
    if fields["fleet"] != fleet:
        raise BundleError("the endorsement is for fleet %r, not for %r" % (fields["fleet"], fleet), "fleet")
    if created - _epoch(now, "now") > DEFAULT_MAX_SKEW:
        raise BundleError("the endorsement was made at %s, in the future: check the clocks"
                          % fields["created_at"], "not_yet_valid")
    return key, Endorsement(fields["endorser"], fields["key_id"], until)


def verify(envelope_bytes, public_key_pem_bytes, host, last_serial, now, max_skew=DEFAULT_MAX_SKEW,
           fleet=DEFAULT_FLEET, max_validity=MAX_VALIDITY, max_step=MAX_SERIAL_STEP, retired=None):
    """Check one envelope and return its ``Bundle``; raise ``BundleError`` when it must not be applied.

    ``public_key_pem_bytes`` holds the trusted key(s) (``trusted_keys``); a key endorsed by one of them
    (``endorse``) is trusted too, and the returned ``Bundle.endorsement`` says so. ``host`` and ``fleet`` are the
    reader's own. ``last_serial`` is the replay state: ``{key_id: serial}`` (the last serial accepted from each
    key; a key without an entry has none yet), or one serial for every key, or ``None`` to skip replay checks. A
    serial more than ``max_step`` above the last one of its key (or, for a key with no history, the highest
    of any key) is refused (``bounds``), and so is a validity window longer than ``max_validity``; ``None``
    disables either bound (for re-reading a bundle that passed them when it was accepted). ``retired`` maps key
    ids to the time after which their bundles are refused (the end of a rotation's overlap). ``now`` is a
    datetime or epoch seconds. A bundle is ``not_yet_valid`` only when its ``created_at`` is more than
    ``max_skew`` seconds ahead of ``now`` (clocks drift); ``expired`` when ``now`` is at or after
    ``valid_until``. The order of checks means a forged bundle always reports ``signature``, whatever else is
    wrong with it.
    """
    trusted = trusted_keys(public_key_pem_bytes)
    outer = _json_object(envelope_bytes, "bundle envelope", _ENVELOPE_KEYS, frozenset(("endorsement",)),
                         formats=(ENVELOPE_FORMAT,))
    current = _epoch(now, "now")
    kid = outer["key_id"]
    endorsement = None
    public_key = trusted.get(kid) if isinstance(kid, str) else None
    if public_key is not None and "endorsement" in outer:
        # a reader that trusts both keys (the overlap) still learns when the endorser retires
        try:
            endorsement = _endorsed_key(outer["endorsement"], trusted, fleet, current)[1]
        except BundleError:
            endorsement = None  # the key is trusted on its own; an endorser it no longer knows does not matter
        if endorsement is not None and endorsement.key_id != kid:
            endorsement = None
    elif public_key is None and "endorsement" in outer:
        public_key, endorsement = _endorsed_key(outer["endorsement"], trusted, fleet, current)
        if endorsement.key_id != kid:
            raise BundleError("the bundle is signed by key %r, but its endorsement vouches for %s (signature "
                              "mismatch)" % (kid, endorsement.key_id), "signature")
    if public_key is None:
        raise BundleError("the bundle is signed by key %r, not by a trusted key (%s) (signature mismatch)"
                          % (kid, ", ".join(sorted(trusted))), "signature")
    payload = _b64(outer["payload"], "payload")
    signature = _b64(outer["signature"], "signature")
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise BundleError("the bundle's signature does not match its payload and the trusted key %s "
                          "(signature mismatch)" % kid, "signature")
    fields = _json_object(payload, "bundle payload", _LEGACY_PAYLOAD_KEYS,
                          _OPTIONAL_PAYLOAD_KEYS | {"fleet"}, formats=(FORMAT, LEGACY_FORMAT))
    if (fields["format"] == FORMAT) != ("fleet" in fields):
        raise BundleError("the bundle payload of format %d %s a fleet" % (
            fields["format"], "lacks" if fields["format"] == FORMAT else "must not carry"), "format")
    if "mode_rulesets" in fields and not _valid_mode_rulesets(fields["mode_rulesets"]):
        raise BundleError("the bundle payload's mode_rulesets is malformed", "format")
    try:
        created = parse_time(fields["created_at"])
        until = parse_time(fields["valid_until"])
    except ValueError as exc:
        raise BundleError("the bundle payload has a malformed time: %s" % exc, "format")
    serial = fields["serial"]
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise BundleError("the bundle serial %r is not a positive integer" % (serial,), "format")
    ruleset = fields["ruleset"]
    if not isinstance(ruleset, str) or fields["mode"] not in MODES:
        raise BundleError("the bundle payload has a malformed ruleset or mode", "format")
    if hashlib.sha256(ruleset.encode("utf-8")).hexdigest() != fields["ruleset_sha256"]:
        raise BundleError("the bundle's ruleset does not match its ruleset_sha256", "format")
    bundle_fleet = fields.get("fleet", DEFAULT_FLEET)
    if bundle_fleet != fleet:
        raise BundleError("the bundle is for fleet %r, not for this fleet %r" % (bundle_fleet, fleet), "fleet")
    if fields["host"] != host:
        raise BundleError("the bundle is for host %r, not for %r" % (fields["host"], host), "host")
    retired_at = (retired or {}).get(kid)
    if retired_at is not None and current >= retired_at:
        raise BundleError("the bundle is signed by key %s, retired by a key rotation at %s (signature mismatch)"
                          % (kid, _format_time(retired_at, "retired")), "signature")
    if isinstance(last_serial, dict):
        last = last_serial.get(kid)
        reference = last if last is not None else max(last_serial.values(), default=None)
    else:
        last = reference = last_serial
    if last is not None and serial <= last:
        raise BundleError("the bundle serial %d is not newer than the last serial %d accepted from key %s"
                          % (serial, last, kid), "replay")
    if max_step is not None and reference is not None and serial > reference + max_step:
        raise BundleError("the bundle serial %d jumps more than %d above the last serial %d; refused (a leaked "
                          "key could otherwise lock out every later release)" % (serial, max_step, reference),
                          "bounds")
    if max_validity is not None and until - created > max_validity:
        raise BundleError("the bundle is valid for %d s (%s to %s), longer than the bound of %d s"
                          % (until - created, fields["created_at"], fields["valid_until"], max_validity), "bounds")
    if current >= until:
        raise BundleError("the bundle expired at %s (now %s)" % (fields["valid_until"], _format_time(current, "now")),
                          "expired")
    if created - current > max_skew:
        raise BundleError("the bundle was created at %s, more than %d s after now (%s): check the clocks"
                          % (fields["created_at"], max_skew, _format_time(current, "now")), "not_yet_valid")
    fields["fleet"] = bundle_fleet
    return Bundle(key_id=kid, endorsement=endorsement, **fields)
