"""The agent checks the controller's certificate against the fleet CRL: a revoked controller replica (say, one that
was compromised) serves no agent, while the others still do."""

import datetime
import ipaddress
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.mseg.fleet.plugins.module_utils.agent.config import Config
from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.agent.fetch import tls_context

NOW = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
PEM = serialization.Encoding.PEM


def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(ca_key, common_name, usage, ip=None):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(name("test CA"))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(PEM))
    files = {}
    for role, usage in (("controller", ExtendedKeyUsageOID.SERVER_AUTH), ("agent", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key, cert = issue(ca_key, "ctl-01" if role == "controller" else "web-01", usage, "127.0.0.1")
        (tmp_path / (role + ".crt")).write_bytes(cert.public_bytes(PEM))
        (tmp_path / (role + ".key")).write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))
        files[role] = cert

    def crl(revoked):
        builder = (x509.CertificateRevocationListBuilder().issuer_name(name("test CA"))
                   .last_update(NOW - datetime.timedelta(hours=1)).next_update(NOW + datetime.timedelta(days=180)))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(NOW).build())
        (tmp_path / "crl.pem").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(PEM))

    files["crl"] = crl
    return tmp_path, files


def agent_config(path, crl=True):
    data = {"host": "web-01", "controllers": ["https://127.0.0.1:8443"], "public_key": str(path / "pub"),
            "tls_cert": str(path / "agent.crt"), "tls_key": str(path / "agent.key"), "tls_ca": str(path / "ca.crt")}
    if crl:
        data["tls_crl"] = str(path / "crl.pem")
    return Config(data)


def handshake(path, context):
    """One TLS handshake with a controller serving controller.crt on a local port."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(path / "controller.crt"), str(path / "controller.key"))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _peer = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname="127.0.0.1"):
                return True
    finally:
        thread.join(5)
        listener.close()


def test_a_revoked_controller_is_refused(pki):
    path, files = pki
    files["crl"]([files["controller"]])
    with pytest.raises(ssl.SSLCertVerificationError, match="revoked"):
        handshake(path, tls_context(agent_config(path)))


def test_a_controller_not_on_the_crl_is_accepted(pki):
    path, files = pki
    files["crl"]([files["agent"]])
    assert handshake(path, tls_context(agent_config(path)))


def test_without_a_crl_configured_the_ca_alone_decides(pki):
    path, files = pki
    files["crl"]([files["controller"]])
    assert handshake(path, tls_context(agent_config(path, crl=False)))


def test_a_missing_crl_is_one_clear_error(pki):
    path, _files = pki
    with pytest.raises(AgentError, match="run the mseg.fleet.pki role"):
        tls_context(agent_config(path))
