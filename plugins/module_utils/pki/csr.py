# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a certificate signing request a managed host returned against what the control node asked for.

Runs on the control node only (the pki role's filter ``csr_problems``), before the CA signs. The CA's ``ownca``
signer copies the CSR's subject and every extension into the certificate, so a host that could choose them could
obtain any identity (another host's name, the controller's name, ``CA:TRUE``). The CSR is therefore accepted only
when it is exactly the request the role builds from inventory data:

* subject: a single ``CN=<inventory name>`` and nothing else;
* extensions: exactly basic constraints ``CA:FALSE``, key usage ``digitalSignature`` alone, the profile's extended
  key usage, and the subject alternative names the control node computed (no more, no fewer, none of another
  type); no other extension of any kind;
* key: the algorithm and size the role configures (ECC on an allowed curve, or RSA of at least 2048 bits with
  exponent 65537), and a valid self-signature (the host holds the private key).

Every problem is reported, not only the first. Cost: one parse and one signature check per CSR.
"""

from __future__ import annotations

import ipaddress

try:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
except ImportError as exc:  # reported when a CSR is checked, so importing this module never fails
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

MAX_PEM = 64 * 1024
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")
RSA_MIN_BITS = 2048
RSA_EXPONENT = 65537
# The extended key usages a profile may ask for, by the names community.crypto uses.
EXTENDED_KEY_USAGE_NAMES = ("clientAuth", "serverAuth")
SAN_KINDS = ("DNS", "IP", "URI")
_KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
               "key_agreement", "key_cert_sign", "crl_sign")
if CRYPTOGRAPHY_IMPORT_ERROR is None:
    EXTENDED_KEY_USAGE = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH, "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH}
    _ALLOWED_EXTENSIONS = {
        ExtensionOID.BASIC_CONSTRAINTS: "basic constraints",
        ExtensionOID.KEY_USAGE: "key usage",
        ExtensionOID.EXTENDED_KEY_USAGE: "extended key usage",
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME: "subject alternative names",
    }


def san_name(entry):
    """``DNS:name``, ``IP:address`` or ``URI:uri`` in one canonical spelling (DNS lower-case, IP compressed);
    ValueError for anything else."""
    kind, sep, value = str(entry).partition(":")
    kind = kind.strip().upper()
    if not sep or kind not in SAN_KINDS or not value:
        raise ValueError("%r is not a DNS:, IP: or URI: name" % (entry,))
    if kind == "DNS":
        return "DNS:" + value.lower()
    if kind == "IP":
        return "IP:" + ipaddress.ip_address(value).compressed
    return "URI:" + value


def _general_name(name):
    if isinstance(name, x509.DNSName):
        return "DNS:" + name.value.lower()
    if isinstance(name, x509.IPAddress):
        if not isinstance(name.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise ValueError("an IP range (%s)" % name.value)
        return "IP:" + name.value.compressed
    if isinstance(name, x509.UniformResourceIdentifier):
        return "URI:" + name.value
    raise ValueError("a %s name (%s)" % (type(name).__name__, getattr(name, "value", "?")))


def _subject_problems(csr, common_name):
    subject = csr.subject
    attributes = list(subject)
    if (len(subject.rdns) == 1 and len(attributes) == 1 and attributes[0].oid == NameOID.COMMON_NAME
            and attributes[0].value == common_name):
        return []
    return ["its subject is %r, not exactly CN=%s" % (subject.rfc4514_string(), common_name)]


def _key_problems(csr, key):
    try:
        public = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return ["its public key cannot be read (%s)" % exc]
    wanted = ("ECC %s" % key.get("curve") if key.get("type") == "ECC" else "RSA %s bits" % key.get("size"))
    how = "the role asks for %s keys (pki_key_type, pki_key_curve, pki_key_size)" % wanted
    if isinstance(public, ec.EllipticCurvePublicKey):
        have = "ECC %s" % public.curve.name
        ok = key.get("type") == "ECC" and public.curve.name == key.get("curve") and public.curve.name in EC_CURVES
    elif isinstance(public, rsa.RSAPublicKey):
        have = "RSA %d bits" % public.key_size
        ok = key.get("type") == "RSA" and public.key_size == key.get("size")
        if public.key_size < RSA_MIN_BITS or public.public_numbers().e != RSA_EXPONENT:
            return ["its key is RSA %d bits with exponent %d; the CA signs RSA keys of at least %d bits with "
                    "exponent %d only" % (public.key_size, public.public_numbers().e, RSA_MIN_BITS, RSA_EXPONENT)]
    else:
        have = type(public).__name__.replace("PublicKey", "").lstrip("_")
        ok = False
    return [] if ok else ["its key is %s; %s" % (have, how)]


def _extension_problems(csr, subject_alt_name, extended_key_usage):
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension) as exc:
        return ["its extensions cannot be read (%s)" % exc]
    found = {}
    problems = []
    for extension in extensions:
        if extension.oid not in _ALLOWED_EXTENSIONS:
            problems.append("it asks for an extension the role never requests (%s)" % (
                getattr(extension.oid, "_name", None) or extension.oid.dotted_string))
        else:
            found[extension.oid] = extension.value
    basic = found.get(ExtensionOID.BASIC_CONSTRAINTS)
    if basic is None or basic.ca or basic.path_length is not None:
        have = "missing" if basic is None else "CA:%s" % str(basic.ca).upper()
        if basic is not None and basic.path_length is not None:
            have += ", pathlen:%d" % basic.path_length
        problems.append("its basic constraints are %s, not CA:FALSE" % have)
    usage = found.get(ExtensionOID.KEY_USAGE)
    if usage is None:
        problems.append("its key usage is missing, not digitalSignature")
    else:
        named = [name for name in _KEY_USAGES if getattr(usage, name)]
        if usage.key_agreement:
            named.extend(name for name in ("encipher_only", "decipher_only") if getattr(usage, name))
        if named != ["digital_signature"]:
            problems.append("its key usage is %s, not digitalSignature alone" % (", ".join(named) or "empty"))
    wanted_eku = {EXTENDED_KEY_USAGE[name] for name in extended_key_usage}
    eku = found.get(ExtensionOID.EXTENDED_KEY_USAGE)
    have_eku = set(eku) if eku is not None else set()
    if have_eku != wanted_eku:
        names = {oid: name for name, oid in EXTENDED_KEY_USAGE.items()}
        problems.append("its extended key usage is %s, not %s" % (
            ", ".join(sorted(names.get(oid, oid.dotted_string) for oid in have_eku)) or "missing",
            ", ".join(sorted(extended_key_usage))))
    problems.extend(_san_problems(found.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME), subject_alt_name))
    return problems


def _san_problems(san, subject_alt_name):
    wanted = set(subject_alt_name)
    have = set()
    problems = []
    for name in (san if san is not None else []):
        try:
            have.add(_general_name(name))
        except ValueError as exc:
            problems.append("it asks for %s as a subject alternative name; the role asks for DNS:, IP: and URI: "
                            "names only" % exc)
    extra, missing = sorted(have - wanted), sorted(wanted - have)
    if extra:
        problems.append("it asks for subject alternative names the inventory does not give this host: %s"
                        % ", ".join(extra))
    if missing:
        problems.append("it lacks subject alternative names the control node asked for: %s" % ", ".join(missing))
    return problems


def csr_problems(pem, common_name, subject_alt_name, extended_key_usage, key):
    """Why the CA must not sign ``pem`` (one sentence each; empty when it is exactly the request the control node
    expects). ``subject_alt_name``: ``DNS:``/``IP:``/``URI:`` names; ``extended_key_usage``: names of
    ``EXTENDED_KEY_USAGE``; ``key``: ``{"type": "ECC", "curve": "secp256r1"}`` or ``{"type": "RSA", "size": 3072}``.
    ValueError when the expectation itself is malformed (a bad entry in the inventory's names)."""
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        raise ValueError("checking a CSR needs the Python package cryptography on the control node (%s): install "
                         "it in Ansible's Python, e.g. pip install cryptography" % CRYPTOGRAPHY_IMPORT_ERROR)
    for name in extended_key_usage:
        if name not in EXTENDED_KEY_USAGE_NAMES:
            raise ValueError("unknown extended key usage %r (known: %s)" % (name, ", ".join(EXTENDED_KEY_USAGE_NAMES)))
    wanted_sans = [san_name(entry) for entry in subject_alt_name]
    if not isinstance(pem, str) or len(pem) > MAX_PEM:
        return ["it is not a PEM certificate signing request of at most %d bytes" % MAX_PEM]
    try:
        csr = x509.load_pem_x509_csr(pem.strip().encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        return ["it is not a PEM certificate signing request (%s)" % exc]
    problems = []
    try:
        if not csr.is_signature_valid:
            problems.append("its signature does not verify with its own public key")
    except (ValueError, UnsupportedAlgorithm) as exc:
        problems.append("its signature cannot be checked (%s)" % exc)
    problems.extend(_subject_problems(csr, common_name))
    problems.extend(_key_problems(csr, key))
    problems.extend(_extension_problems(csr, wanted_sans, extended_key_usage))
    return problems
