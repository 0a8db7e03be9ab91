# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signed policy bundles: what the control node signs, the controllers serve and the agents verify.

Plain Python (no Ansible imports), importable on Python 3.8+ with only ``cryptography``. The control
node signs with ``make_payload`` + ``sign`` + ``envelope``; an agent (and every test) checks with
``verify``, the one and only verification path. Format (docs/bundles.md):

* payload: canonical JSON (sorted keys, no spaces, UTF-8) of ``format``, ``host``, ``serial``,
  ``policy_digest``, ``mode``, ``created_at``, ``valid_until``, ``ruleset`` and ``ruleset_sha256``;
* signature: raw Ed25519 (64 bytes) over the payload bytes, detached (not inside the payload);
* envelope: one JSON file per host carrying ``format``, ``key_id``, base64 ``payload`` and base64
  ``signature``, so a reader never pairs a payload with another publish's signature.
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

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
except ImportError as exc:  # reported by require_cryptography(), so importing this module never fails
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

FORMAT = 1
MODES = ("observe", "enforce", "bypass")
KINDS = ("signature", "host", "replay", "expired", "not_yet_valid", "format")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DEFAULT_MAX_SKEW = 300
_EPOCH = datetime.datetime(1970, 1, 1)
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
_PAYLOAD_KEYS = frozenset(("format", "host", "serial", "policy_digest", "mode", "created_at",
                           "valid_until", "ruleset", "ruleset_sha256"))
# The host's ruleset rendered for the other modes (observe, enforce), so its agent can switch mode locally.
_OPTIONAL_PAYLOAD_KEYS = frozenset(("mode_rulesets",))
LOCAL_MODES = ("observe", "enforce")
_ENVELOPE_KEYS = frozenset(("format", "key_id", "payload", "signature"))

Bundle = collections.namedtuple("Bundle", ("format", "host", "serial", "policy_digest", "mode", "created_at",
                                           "valid_until", "ruleset", "ruleset_sha256", "key_id", "mode_rulesets"),
                                defaults=(None,))


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


def make_payload(host, serial, policy_digest, mode, ruleset, created_at, valid_until, mode_rulesets=None):
    """Return the canonical payload bytes for one host. Raises ValueError on input that cannot be signed.

    ``mode_rulesets`` optionally maps observe/enforce to the host's ruleset rendered in that mode.
    """
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
    if mode_rulesets and not _valid_mode_rulesets(mode_rulesets):
        raise ValueError("mode_rulesets for %s must map observe/enforce to non-empty rulesets" % host)
    payload = {
        "format": FORMAT,
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


def _load_key(pem, private):
    """The Ed25519 key in ``pem``: the signing (private) key or the verification (public) key."""
    require_cryptography()
    if private:
        what, form, expected = "signing key", "an unencrypted PEM private key", ed25519.Ed25519PrivateKey
    else:
        what, form, expected = "verification key", "a PEM public key", ed25519.Ed25519PublicKey
    try:
        key = (serialization.load_pem_private_key(_bytes(pem), password=None) if private
               else serialization.load_pem_public_key(_bytes(pem)))
    except (ValueError, TypeError) as exc:
        raise ValueError("the %s is not %s (%s)" % (what, form, exc))
    if not isinstance(key, expected):
        raise ValueError("the %s is not an Ed25519 key" % what)
    return key


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


def _raw_public(key):
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(private_key_pem):
    """Return the PEM (SubjectPublicKeyInfo) public key of an Ed25519 private key."""
    return _load_key(private_key_pem, private=True).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key_pem_bytes):
    """First 16 hex digits of the sha256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(_raw_public(_load_key(public_key_pem_bytes, private=False))).hexdigest()[:16]


def sign(payload, private_key_pem):
    """Raw 64-byte Ed25519 signature of ``payload`` (bytes)."""
    return _load_key(private_key_pem, private=True).sign(_bytes(payload))


def envelope(payload, signature, key_id_hex):
    """The file a controller serves: canonical JSON with the base64 payload and detached signature."""
    return canonical_json({
        "format": FORMAT,
        "key_id": key_id_hex,
        "payload": base64.b64encode(_bytes(payload)).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    })


def make_envelope(host, serial, policy_digest, mode, ruleset, created_at, valid_until, private_key_pem,
                  mode_rulesets=None):
    """Payload, signature and envelope in one call (what the control node does for every host)."""
    payload = make_payload(host, serial, policy_digest, mode, ruleset, created_at, valid_until, mode_rulesets)
    return envelope(payload, sign(payload, private_key_pem), key_id(public_key_pem(private_key_pem)))


def _b64(text, what):
    if not isinstance(text, str):
        raise BundleError("the bundle's %s is not a base64 string" % what, "format")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BundleError("the bundle's %s is not valid base64" % what, "format")


def _json_object(data, what, keys, optional=frozenset()):
    try:
        value = json.loads(_bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise BundleError("the %s is not UTF-8 JSON (%s)" % (what, exc), "format")
    if not isinstance(value, dict):
        raise BundleError("the %s is not a JSON object" % what, "format")
    if not keys <= set(value) <= keys | optional:
        raise BundleError("the %s has fields %s, expected %s" % (what, ", ".join(sorted(value)),
                                                                 ", ".join(sorted(keys))), "format")
    if value["format"] != FORMAT or isinstance(value["format"], bool):
        raise BundleError("the %s has format %r; this reader understands format %d"
                          % (what, value["format"], FORMAT), "format")
    return value


def verify(envelope_bytes, public_key_pem_bytes, host, last_serial, now, max_skew=DEFAULT_MAX_SKEW):
    """Check one envelope and return its ``Bundle``; raise ``BundleError`` when it must not be applied.

    ``host`` is the reader's own inventory name, ``last_serial`` the serial it applied last (``None`` or 0
    when it has none), ``now`` a datetime or epoch seconds. A bundle is ``not_yet_valid`` only when its
    ``created_at`` is more than ``max_skew`` seconds ahead of ``now`` (clocks drift); ``expired`` when
    ``now`` is at or after ``valid_until``. The order of checks means a forged bundle always reports
    ``signature``, whatever else is wrong with it.
    """
    public_key = _load_key(public_key_pem_bytes, private=False)
    outer = _json_object(envelope_bytes, "bundle envelope", _ENVELOPE_KEYS)
    expected_id = hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]
    if outer["key_id"] != expected_id:
        raise BundleError("the bundle is signed by key %r, not by the trusted key %s (signature mismatch)"
                          % (outer["key_id"], expected_id), "signature")
    payload = _b64(outer["payload"], "payload")
    signature = _b64(outer["signature"], "signature")
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise BundleError("the bundle's signature does not match its payload and the trusted key %s "
                          "(signature mismatch)" % expected_id, "signature")
    fields = _json_object(payload, "bundle payload", _PAYLOAD_KEYS, _OPTIONAL_PAYLOAD_KEYS)
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
    if fields["host"] != host:
        raise BundleError("the bundle is for host %r, not for %r" % (fields["host"], host), "host")
    if last_serial is not None and serial <= last_serial:
        raise BundleError("the bundle serial %d is not newer than the last applied serial %d"
                          % (serial, last_serial), "replay")
    current = _epoch(now, "now")
    if current >= until:
        raise BundleError("the bundle expired at %s (now %s)" % (fields["valid_until"], _format_time(current, "now")),
                          "expired")
    if created - current > max_skew:
        raise BundleError("the bundle was created at %s, more than %d s after now (%s): check the clocks"
                          % (fields["created_at"], max_skew, _format_time(current, "now")), "not_yet_valid")
    return Bundle(key_id=outer["key_id"], **fields)
