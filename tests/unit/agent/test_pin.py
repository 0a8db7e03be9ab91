"""The agent fetches only from a server whose certificate carries the controller identity of the wire contract.

Real TLS handshakes on 127.0.0.1: a server with a certificate from the fleet CA that is valid for the address the
agent dialled, but without the controller identity (what any host could hold), is refused, so the agent fails
over; the same server with the controller identity is fetched from.
"""

import datetime
import http.server
import ipaddress
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.mseg.fleet.plugins.module_utils.agent.fetch import Fetcher
from ansible_collections.mseg.fleet.plugins.module_utils.agent.pin import require_controller
from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import CONTROLLER_IDENTITY

NOW = datetime.datetime.now(datetime.timezone.utc)
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(name, key):
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(CA_NAME).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5)).not_valid_after(NOW + datetime.timedelta(hours=1)))


CA_CERT = (_builder("test CA", CA_KEY).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(CA_KEY, hashes.SHA256()))


def _server_files(tmp_path, name, identity):
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if identity:
        sans.append(x509.UniformResourceIdentifier(CONTROLLER_IDENTITY))
    cert = (_builder(name, key).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(CA_KEY, hashes.SHA256()))
    (tmp_path / "server.crt").write_bytes(_pem(cert))
    (tmp_path / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    return str(tmp_path / "server.crt"), str(tmp_path / "server.key")


class _Bundle(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the handler's name)
        body = b'{"bundle": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.HTTPServer):
    def handle_error(self, request, client_address):
        """A client that refuses the server mid-request is what the tests expect, not an error to print."""


@pytest.fixture(name="serve")
def fixture_serve(tmp_path):
    servers = []

    def serve(name, identity):
        cert, key = _server_files(tmp_path, name, identity)
        server = _Server(("127.0.0.1", 0), _Bundle)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return ("127.0.0.1", server.server_address[1], "/v1/bundle")

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _fetcher():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=_pem(CA_CERT).decode())
    return Fetcher(context, 5)


def test_a_server_with_the_controller_identity_serves_the_bundle(serve):
    status, body, _etag = _fetcher()(serve("ctl-01", identity=True), None)
    assert (status, body) == (200, b'{"bundle": true}')


def test_a_host_certificate_valid_for_the_address_is_refused(serve):
    with pytest.raises(OSError) as err:
        _fetcher()(serve("web-01", identity=False), None)
    assert "does not carry the controller identity URI:%s" % CONTROLLER_IDENTITY in str(err.value)


@pytest.mark.parametrize("peer", [None, {}, {"subjectAltName": (("DNS", CONTROLLER_IDENTITY),)},
                                  {"subjectAltName": (("URI", CONTROLLER_IDENTITY + "/x"),)}])
def test_only_the_exact_uri_name_counts(peer):
    with pytest.raises(OSError):
        require_controller(peer)
    require_controller({"subjectAltName": (("DNS", "ctl-01"), ("URI", CONTROLLER_IDENTITY))})
