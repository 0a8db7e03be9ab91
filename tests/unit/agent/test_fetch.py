"""A controller that misbehaves cannot stop the agent: real TLS servers in threads drip bytes, send 20 MiB, nest
JSON 100k deep; the agent fails over to the good one and keeps running. Renewed TLS files reach the running agent."""

import datetime
import io
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.mseg.fleet.plugins.module_utils.agent import config as agent_config
from ansible_collections.mseg.fleet.plugins.module_utils.agent import daemon
from ansible_collections.mseg.fleet.plugins.module_utils.agent import log as agent_log
from ansible_collections.mseg.fleet.plugins.module_utils.agent.fetch import Credentials, Fetcher, json_depth
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import CONTROLLER_IDENTITY

from test_agent import PUB, Applier, envelope


@pytest.fixture
def log():
    stream = io.StringIO()
    logger = agent_log.make_logger(None, stream)
    logger.stream = stream
    yield logger
    logger.handlers = []


def _pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(cn, key, issuer_key, issuer=None, ca=False, san=None, serial=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(serial or x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    import ipaddress
    base = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, ca_key, ca=True)
    issuer = x509.load_pem_x509_certificate(ca).subject
    server_key = ec.generate_private_key(ec.SECP256R1())
    files = {"ca.crt": ca, "server.key": _pem(server_key),
             "server.crt": _cert("controller", server_key, ca_key, issuer,
                                 san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                      x509.UniformResourceIdentifier(CONTROLLER_IDENTITY)])}
    for name, data in files.items():
        (base / name).write_bytes(data)

    def agent_cert(directory, serial):
        key = ec.generate_private_key(ec.SECP256R1())
        (directory / "agent.key").write_bytes(_pem(key))
        (directory / "agent.crt").write_bytes(_cert("web-01", key, ca_key, issuer, serial=serial))
    return base, agent_cert


class Controller:
    """A TLS 1.3 server in a thread that answers every request with ``behaviour(conn, peer_serial)``."""

    def __init__(self, pki_dir, behaviour):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(pki_dir / "ca.crt"))
        context.load_cert_chain(str(pki_dir / "server.crt"), str(pki_dir / "server.key"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.behaviour = behaviour
        self.peers = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                raw, _addr = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw):
        try:
            raw.settimeout(10)
            conn = self.context.wrap_socket(raw, server_side=True)
            self.peers.append(conn.getpeercert()["serialNumber"])
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            self.behaviour(conn, self.stop)
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    def close(self):
        self.stop.set()
        self.listener.close()


def drip(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not stop.wait(0.1):
        conn.sendall(b" ")


def huge(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    block = b" " * 65536
    for _block in range(20 * 16):  # 20 MiB, without a Content-Length
        if stop.is_set():
            return
        conn.sendall(block)


def deep(conn, stop):
    body = b"[" * 100000 + b"]" * 100000
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def serving(raw):
    def behaviour(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw)
    return behaviour


@pytest.fixture
def controllers(pki):
    started = []

    def start(behaviour):
        server = Controller(pki[0], behaviour)
        started.append(server)
        return server
    yield start
    for server in started:
        server.close()


def _config(tmp_path, pki, ports, serial=1, **extra):
    base, agent_cert = pki
    agent_cert(tmp_path, serial)
    data = {"host": "web-01", "controllers": ["127.0.0.1:%d" % port for port in ports], "timeout": 0.5,
            "public_key": "/nonexistent", "tls_cert": str(tmp_path / "agent.crt"),
            "tls_key": str(tmp_path / "agent.key"), "tls_ca": str(base / "ca.crt"),
            "state_dir": str(tmp_path / "state")}
    data.update(extra)
    return agent_config.Config(data)


def test_json_depth_scan_skips_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[[[["}]}', 3)
    assert not json_depth(b"[" * 5 + b"]" * 5, 4)
    assert json_depth(b'["\\"[[[[["]', 1)


def test_deep_nesting_is_a_format_error_not_a_crash():
    """bundles.verify used to let the parser's RecursionError out (it killed the agent); now it is a refusal."""
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(b"[" * 100000 + b"]" * 100000, PUB, "web-01", None, time.time())
    assert err.value.kind == "format"


def test_each_bad_controller_is_a_failover_and_the_agent_keeps_running(tmp_path, pki, controllers, log):
    good_raw = envelope(1, created=time.time() - 60, until=time.time() + 3600)
    bad = [controllers(drip), controllers(huge), controllers(deep)]
    good = controllers(serving(good_raw))
    config = _config(tmp_path, pki, [s.port for s in bad] + [good.port])
    fetcher = Fetcher(Credentials(config), config.timeout, config.max_body)
    assert fetcher.deadline == pytest.approx(1.5)
    applier = Applier()
    agent = daemon.Agent("web-01", config.state_dir, PUB, log, controllers=config.controllers, fetcher=fetcher,
                         applier=applier)
    agent.state.ensure()
    started = time.monotonic()
    assert agent.poll_once() == "applied"
    took = time.monotonic() - started
    assert took < 6, "the drip must end at the deadline, not hold the agent (%.1fs)" % took
    text = log.stream.getvalue()
    assert "failover to https://127.0.0.1:%d" % good.port in text
    assert "no complete answer within the fetch deadline of 1.5s" in text
    assert "larger than the agent's limit of 16777216 bytes" in text
    assert "nests JSON deeper than 32 levels" in text
    assert applier.applied == [bundle.verify(good_raw, PUB, "web-01", None, time.time()).ruleset]


def test_body_cap_comes_from_the_configuration(tmp_path, pki, controllers):
    raw = envelope(1, created=time.time() - 60, until=time.time() + 3600, ruleset="# padding\n" * 200)
    server = controllers(serving(raw))
    config = _config(tmp_path, pki, [server.port], max_body=1024)
    fetcher = Fetcher(Credentials(config), config.timeout, config.max_body)
    with pytest.raises(OSError, match="announces %d bytes, more than the agent's limit of 1024" % len(raw)):
        fetcher(config.controllers[0], None)


def test_a_bundle_nesting_too_deep_for_the_parser_is_refused_not_raised(tmp_path, log):
    agent = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, applier=Applier())
    agent.state.ensure()
    assert agent.accept(b"[" * 100000 + b"]" * 100000, "https://c1") == "refused"
    assert "bundle refused from https://c1" in log.stream.getvalue()


def test_an_unexpected_fetch_error_is_a_failover(tmp_path, log):
    def fetcher(controller, etag):
        if controller[0] == "c1":
            raise RecursionError("maximum recursion depth exceeded")
        return 304, b"", None
    agent = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log,
                         controllers=[("c1", 8443, "/v1/bundle"), ("c2", 8443, "/v1/bundle")], fetcher=fetcher)
    agent.state.ensure()
    assert agent.poll_once() == "unchanged"
    assert "failover to https://c2:8443/v1/bundle after https://c1:8443/v1/bundle: maximum recursion" in \
        log.stream.getvalue()


def test_a_restart_does_not_start_at_the_controller_that_failed(tmp_path, log):
    calls = []

    def fetcher(controller, etag):
        calls.append(controller[0])
        if controller[0] == "c1":
            raise OSError("deadline")
        return 304, b"", None
    controllers_ = [("c1", 8443, "/v1/bundle"), ("c2", 8443, "/v1/bundle"), ("c3", 8443, "/v1/bundle")]
    first = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, controllers=controllers_, fetcher=fetcher)
    first.state.ensure()
    first.resume_order()
    first.poll_once()
    assert calls == ["c1", "c2"]
    del calls[:]
    restarted = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, controllers=controllers_, fetcher=fetcher)
    restarted.resume_order()
    restarted.poll_once()
    assert calls == ["c2"]
    # the last good one failing (it crashed the agent, say) sends the next start to the one after it
    restarted._remember(last_failed="https://c2:8443/v1/bundle")
    del calls[:]
    again = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, controllers=controllers_, fetcher=fetcher)
    again.resume_order()
    again.poll_once()
    assert calls == ["c3"]


def test_renewed_certificate_reaches_the_running_agent(tmp_path, pki, controllers):
    raw = envelope(1, created=time.time() - 60, until=time.time() + 3600)
    server = controllers(serving(raw))
    config = _config(tmp_path, pki, [server.port], serial=1001)
    fetcher = Fetcher(Credentials(config), config.timeout, config.max_body)
    assert fetcher(config.controllers[0], None)[0] == 200
    assert fetcher.refresh() is False
    pki[1](tmp_path, 1002)  # the pki role renews key and certificate in place
    assert fetcher.refresh() is True
    assert fetcher(config.controllers[0], None)[0] == 200
    assert server.peers == ["03E9", "03EA"]


def test_unusable_renewed_files_keep_the_working_credentials(tmp_path, pki, controllers):
    raw = envelope(1, created=time.time() - 60, until=time.time() + 3600)
    server = controllers(serving(raw))
    config = _config(tmp_path, pki, [server.port], serial=1001)
    credentials = Credentials(config)
    fetcher = Fetcher(credentials, config.timeout, config.max_body)
    (tmp_path / "agent.key").write_bytes(b"half a key")
    assert fetcher.refresh() is False
    assert "keeping the previous ones" in credentials.problem
    assert fetcher(config.controllers[0], None)[0] == 200
    assert server.peers == ["03E9"]


class Kernel:
    """The live table as the agent's lister sees it; the applier loads into it (the engine records its listing)."""

    def __init__(self, agent_state):
        self.table = None
        self.state = agent_state
        self.applied = []

    def apply(self, content):
        import os
        os.makedirs(self.state.nft_dir, exist_ok=True)
        self.table = content
        self.applied.append(content)
        with open(os.path.join(self.state.nft_dir, "live.nft"), "w") as handle:
            handle.write(content)
        return {"changed": True, "msg": "replaced table inet mseg"}


def test_the_agent_never_replaces_a_foreign_emergency_bypass(tmp_path, log):
    from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset
    from test_agent import NOW
    agent = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, controllers=[("c1", 8443, "/v1/bundle")],
                         clock=lambda: NOW)
    kernel = Kernel(agent.state)
    agent.applier, agent.lister = kernel.apply, lambda: kernel.table
    agent.state.ensure()
    answers = {"c1": (200, envelope(1), '"e1"')}
    agent.fetcher = lambda controller, etag: answers["c1"]
    assert agent.poll_once() == "applied"
    # mseg.fleet.bypass (or the boot restore of its persisted table) puts the emergency bypass in, behind the agent
    kernel.table = bypass_ruleset("web-01")
    answers["c1"] = (200, envelope(2), '"e2"')
    assert agent.poll_once() == "held"
    assert "emergency_bypass" in kernel.table and len(kernel.applied) == 1
    assert agent.apply_desired("start") is None  # a restart does not replace it either
    assert agent.meta()["serial"] == 2  # verified and kept for when the bypass is lifted
    text = log.stream.getvalue()
    assert text.count("stands down") == 1 and "'mseg mode bypass' then 'mseg mode clear'" in text
    # the operator hands the table back: the agent's own bypass replaces the foreign one, clear applies serial 2
    agent.bypass("operator")
    assert kernel.applied[-1] == bypass_ruleset("web-01")
    agent.clear_override("operator")
    assert "# serial 2" in kernel.applied[-1]


def test_the_agent_resumes_once_the_foreign_bypass_is_lifted(tmp_path, log):
    from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset
    from test_agent import NOW
    agent = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, controllers=[("c1", 8443, "/v1/bundle")],
                         clock=lambda: NOW)
    kernel = Kernel(agent.state)
    agent.applier, agent.lister = kernel.apply, lambda: kernel.table
    agent.state.ensure()
    kernel.table = bypass_ruleset("web-01")
    agent.fetcher = lambda controller, etag: (200, envelope(1), '"e1"')
    assert agent.poll_once() == "held" and kernel.applied == []
    kernel.table = None  # lifted (mseg.fleet.mode from before the agent, or by hand)
    agent.fetcher = lambda controller, etag: (304, b"", '"e1"')
    assert agent.poll_once() == "unchanged"
    assert "# serial 1" in kernel.applied[-1]
    assert "the foreign emergency bypass is gone" in log.stream.getvalue()
