"""The CA's check of a host's CSR: the request the pki role builds passes; every forged one is refused and says why.

The CSRs are made here with ``cryptography``, as a compromised host would make them: it holds its own key and can
put anything it likes in the request.
"""

import ipaddress

import pytest
from ansible.errors import AnsibleFilterError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.mseg.fleet.plugins.filter.csr_problems import csr_problems
from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import CONTROLLER_IDENTITY

HOST = "web-01"
SANS = ["DNS:web-01", "IP:192.0.2.10", "IP:2001:db8::10"]
P256 = ec.generate_private_key(ec.SECP256R1())


def _csr(key=P256, subject=((NameOID.COMMON_NAME, HOST),), sans=(x509.DNSName("web-01"),
         x509.IPAddress(ipaddress.ip_address("192.0.2.10")), x509.IPAddress(ipaddress.ip_address("2001:db8::10"))),
         ca=False, path_length=None, usage=None, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,), extra=()):
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    usage = dict(dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                                "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False),
                 digital_signature=True, **(usage or {}))
    builder = builder.add_extension(x509.KeyUsage(**usage), critical=True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def _check(pem, sans=tuple(SANS), eku=("clientAuth",), **key):
    key = key or {"key_type": "ECC", "key_curve": "secp256r1"}
    return csr_problems(pem, HOST, list(sans), list(eku), **key)


def test_the_request_the_role_builds_passes():
    assert _check(_csr()) == []
    # the same names in another order and spelling (upper-case DNS, uncompressed IPv6) are the same names
    assert _check(_csr(), sans=["ip:2001:0db8:0:0:0:0:0:10", "DNS:WEB-01", "IP:192.0.2.10"]) == []


def test_a_controller_request_with_the_controller_identity_passes():
    sans = SANS + ["URI:" + CONTROLLER_IDENTITY]
    pem = _csr(sans=[x509.DNSName("web-01"), x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
                     x509.IPAddress(ipaddress.ip_address("2001:db8::10")),
                     x509.UniformResourceIdentifier(CONTROLLER_IDENTITY)], eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    assert _check(pem, sans=sans, eku=["serverAuth"]) == []


@pytest.mark.parametrize("forged, expected", [
    (dict(subject=((NameOID.COMMON_NAME, "ctl-01"),)), "its subject is 'CN=ctl-01', not exactly CN=web-01"),
    (dict(subject=((NameOID.COMMON_NAME, HOST), (NameOID.ORGANIZATIONAL_UNIT_NAME, "controllers"))),
     "not exactly CN=web-01"),
    (dict(sans=(x509.DNSName("web-01"), x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::10")), x509.DNSName("controller.example.org"))),
     "subject alternative names the inventory does not give this host: DNS:controller.example.org"),
    (dict(sans=(x509.DNSName("web-01"), x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::10")),
                x509.UniformResourceIdentifier(CONTROLLER_IDENTITY))),
     "does not give this host: URI:" + CONTROLLER_IDENTITY),
    (dict(sans=(x509.DNSName("web-01"), x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::10")), x509.RFC822Name("root@web-01"))),
     "RFC822Name name (root@web-01)"),
    (dict(sans=(x509.DNSName("web-01"), x509.IPAddress(ipaddress.ip_network("192.0.2.0/24")))),
     "an IP range (192.0.2.0/24)"),
    (dict(ca=True, path_length=0), "its basic constraints are CA:TRUE, pathlen:0, not CA:FALSE"),
    (dict(usage={"key_cert_sign": True, "crl_sign": True}),
     "its key usage is digital_signature, key_cert_sign, crl_sign, not digitalSignature alone"),
    (dict(eku=(ExtendedKeyUsageOID.SERVER_AUTH,)), "its extended key usage is serverAuth, not clientAuth"),
    (dict(eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.CODE_SIGNING)),
     "its extended key usage is 1.3.6.1.5.5.7.3.3, clientAuth, not clientAuth"),
    (dict(eku=()), "its extended key usage is missing, not clientAuth"),
    (dict(extra=(x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.org")], excluded_subtrees=None),)),
     "an extension the role never requests (nameConstraints)"),
    (dict(key=ec.generate_private_key(ec.SECP384R1())),
     "its key is ECC secp384r1; the role asks for ECC secp256r1 keys"),
    (dict(key=ed25519.Ed25519PrivateKey.generate()), "its key is Ed25519; the role asks for ECC secp256r1 keys"),
])
def test_a_forged_request_is_refused(forged, expected):
    problems = _check(_csr(**forged))
    assert any(expected in problem for problem in problems), problems


def test_a_request_missing_a_name_the_control_node_asked_for_is_refused():
    problems = _check(_csr(sans=(x509.DNSName("web-01"),)))
    assert problems == ["it lacks subject alternative names the control node asked for: IP:192.0.2.10, "
                        "IP:2001:db8::10"]


def test_every_problem_is_listed_not_only_the_first():
    problems = _check(_csr(subject=((NameOID.COMMON_NAME, "ctl-01"),), ca=True, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)))
    assert len(problems) == 3, problems


def test_weak_rsa_keys_are_refused_whatever_the_configuration():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    problems = _check(_csr(key=weak), key_type="RSA", key_size=1024)
    assert problems == ["its key is RSA 1024 bits with exponent 65537; the CA signs RSA keys of at least 2048 bits "
                        "with exponent 65537 only"]
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _check(_csr(key=strong), key_type="RSA", key_size=2048) == []
    assert _check(_csr(key=strong)) == ["its key is RSA 2048 bits; the role asks for ECC secp256r1 keys "
                                        "(pki_key_type, pki_key_curve, pki_key_size)"]


def test_a_request_whose_signature_does_not_verify_is_refused():
    good = x509.load_pem_x509_csr(_csr().encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    assert _check(forged) == ["its signature does not verify with its own public key"]


@pytest.mark.parametrize("pem", ["", "not a csr", None, "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 70000])
def test_what_is_not_a_csr_is_refused_with_a_message(pem):
    problems = _check(pem)
    assert len(problems) == 1 and "PEM certificate signing request" in problems[0]


def test_a_malformed_expectation_fails_with_the_entry():
    with pytest.raises(AnsibleFilterError) as err:
        _check(_csr(), sans=["email:root@web-01"])
    assert "'email:root@web-01' is not a DNS:, IP: or URI: name" in str(err.value)
    assert "pki_extra_sans" in str(err.value)
