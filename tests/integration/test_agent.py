"""The agent process against a real HTTPS controller with mutual TLS, applying to real nftables (root only).

Two network namespaces: ``ctl`` runs a small TLS 1.3 server that asks for a client certificate and serves the
bundle file it finds on disk (with ETags); ``host`` runs ``mseg-agent run`` (the real command line, the real
apply engine, the real ``nft``). The drop log reads the ruleset's NFLOG group in ``host`` (NFLOG works per network
namespace): a packet the policy drops there becomes a ``Policy Drop: ID=...`` line in the runtime log, while a
forged ``[MSEG-DROP]`` kernel log line (what any local user, or a container's root, can put into the kernel log)
never does.
"""

import datetime
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, COLLECTIONS)

from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import CONTROLLER_IDENTITY  # noqa: E402
from netns import CONNECTED, TIMEOUT, Fleet, available  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

# The host CLI as the entry point in /usr/sbin runs it (agent/cli.py's main), from this checkout.
CLI = [sys.executable, "-m", "ansible_collections.mseg.fleet.plugins.module_utils.agent.cli"]

SERVER = r"""
import hashlib, http.server, os, ssl, sys
directory, ca, cert, key = sys.argv[1:5]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with open(os.path.join(directory, "connections"), "a") as handle:
            handle.write("c")

    def do_GET(self):
        with open(os.path.join(directory, "requests"), "a") as handle:
            handle.write("r")
        name = self.connection.getpeercert()["subject"][0][0][1]
        try:
            with open(os.path.join(directory, name + ".json"), "rb") as handle:
                body = handle.read()
        except OSError:
            self.send_response(404); self.end_headers(); return
        etag = '"%s"' % hashlib.sha256(body).hexdigest()[:16]
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304); self.send_header("ETag", etag); self.end_headers(); return
        self.send_response(200); self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)

    def log_message(self, *args):
        pass

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_3
context.verify_mode = ssl.CERT_REQUIRED
context.load_verify_locations(ca)
context.load_cert_chain(cert, key)
server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject, issuer_key, key, ca=False, issuer=None, san=None, usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def world(tmp_path):
    """Keys, certificates, a controller serving tmp_path/served, and a started agent in namespace host."""
    import ipaddress
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_pem = _cert("test CA", ca_key, ca_key, ca=True)
    ca_name = x509.load_pem_x509_certificate(ca_pem).subject
    files = {"ca.crt": ca_pem}
    for name, usage, san in (("controller", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.IPAddress(ipaddress.ip_address("10.77.0.1")),
                               x509.UniformResourceIdentifier(CONTROLLER_IDENTITY)]),
                             ("agent", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("host")])):
        key = ec.generate_private_key(ec.SECP256R1())
        files[name + ".key"] = _pem_key(key)
        files[name + ".crt"] = _cert(name == "agent" and "host" or "controller", ca_key, key, issuer=ca_name,
                                     san=san, usage=usage)
    signing = _pem_key(ed25519.Ed25519PrivateKey.generate())
    files["bundle-signing.pub"] = bundle.public_key_pem(signing)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    served = tmp_path / "served"
    served.mkdir()
    config = {"host": "host", "controllers": ["10.77.0.9:8443", "10.77.0.1:8443"],
              "interval": 0.5, "jitter": 0.2, "timeout": 1.0,
              "public_key": str(tmp_path / "bundle-signing.pub"), "tls_cert": str(tmp_path / "agent.crt"),
              "tls_key": str(tmp_path / "agent.key"), "tls_ca": str(tmp_path / "ca.crt"),
              "state_dir": str(tmp_path / "state"), "log_file": str(tmp_path / "runtime.log"), "droplog": "nflog"}
    (tmp_path / "agent.json").write_text(json.dumps(config))
    with Fleet(["ctl", "host"]) as fleet:
        server = fleet.popen("ctl", [sys.executable, "-c", SERVER, str(served), str(tmp_path / "ca.crt"),
                                     str(tmp_path / "controller.crt"), str(tmp_path / "controller.key")],
                             stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        env = dict(os.environ, PYTHONPATH=COLLECTIONS)
        agent = fleet.popen("host", CLI + ["--config", str(tmp_path / "agent.json"), "run"], env=env)
        serial = [0]

        def publish(ruleset, **kwargs):
            serial[0] += 1
            now = int(time.time())
            raw = bundle.make_envelope("host", kwargs.pop("serial", serial[0]), "p" * 64, "enforce", ruleset,
                                       now - 5, now + 600, kwargs.pop("key", signing))
            (served / "host.json").write_bytes(raw)
            return raw

        publish.agent = agent  # a test that runs the boot restore stops the agent first
        try:
            yield fleet, publish, tmp_path
        finally:
            agent.terminate()
            agent.wait(10)
            server.terminate()
            server.wait(10)


RULESET = """table inet mseg {
    set mgmt_auto_v4 {
        type ipv4_addr . inet_service
    }
    set mgmt_auto_v6 {
        type ipv6_addr . inet_service
    }
    counter rule_1024_in {
    }
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 5432 counter name "rule_1024_in" log prefix "[MSEG-DROP] ID=1024 " log group 2710 prefix "[MSEG-DROP] ID=1024 " drop
        tcp dport %d drop
    }
}
"""


def _status(tmp_path):
    try:
        with open(tmp_path / "state" / "status.json") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _wait(what, predicate, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail("timed out waiting for " + what)


def test_agent_pulls_applies_refuses_and_logs_drops(world):
    fleet, publish, tmp = world
    publish(RULESET % 7001)
    _wait("serial 1 applied", lambda: (_status(tmp).get("last_apply") or {}).get("what", "").startswith("serial 1 "))
    listing = fleet.run("host", ["nft", "list", "table", "inet", "mseg"]).stdout
    assert "tcp dport 7001 drop" in listing
    log = (tmp / "runtime.log").read_text()
    assert "failover to https://10.77.0.1:8443/v1/bundle after https://10.77.0.9:8443/v1/bundle" in log
    # collecting is announced (the observe report tells "no events" from "nobody was collecting")
    _wait("the drop log heartbeat", lambda: "drop log: collecting on host from NFLOG groups 2710,2711,2712"
          in (tmp / "runtime.log").read_text())
    # a forged kernel log line is no event; a real packet dropped by rule 1024 is (kernel -> NFLOG group 2710)
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write("[MSEG-DROP] ID=4242 IN=eth0 OUT= SRC=10.66.6.6 DST=10.77.0.2 LEN=60 PROTO=TCP SPT=1 DPT=22\n")
    assert fleet.probe("ctl", "host", 5432, timeout=0.5) == TIMEOUT
    _wait("the drop log line", lambda: "Policy Drop: ID=1024 src=10.77.0.1 dst=10.77.0.2 proto=tcp dport=5432 "
          "dir=ingress" in (tmp / "runtime.log").read_text())
    assert "ID=4242" not in (tmp / "runtime.log").read_text()
    # a bundle signed by another key: refused, the table stays
    before = fleet.run("host", ["nft", "-s", "list", "table", "inet", "mseg"]).stdout
    publish(RULESET % 7002, key=_pem_key(ed25519.Ed25519PrivateKey.generate()))
    _wait("the refusal", lambda: (_status(tmp).get("last_error") or {}).get("kind") == "signature")
    assert fleet.run("host", ["nft", "-s", "list", "table", "inet", "mseg"]).stdout == before
    assert "signature mismatch" in (tmp / "runtime.log").read_text()
    # a ruleset nft rejects: the apply fails, the previous table stays live, the serial is not accepted
    publish("table inet mseg {\n    chain input {\n        tcp dport 1 frobnicate\n    }\n}\n")
    _wait("the apply failure", lambda: (_status(tmp).get("last_error") or {}).get("kind") == "apply")
    assert fleet.run("host", ["nft", "-s", "list", "table", "inet", "mseg"]).stdout == before
    assert _status(tmp)["serial"] == 1
    # the next good serial goes through; ETags keep the polls cheap in between
    publish(RULESET % 7004)
    _wait("serial 4 applied", lambda: _status(tmp).get("serial") == 4)
    assert "tcp dport 7004 drop" in fleet.run("host", ["nft", "list", "table", "inet", "mseg"]).stdout
    assert fleet.probe("ctl", "host", 7001, timeout=0.5) == CONNECTED
    digest = hashlib.sha256((tmp / "state" / "current.json").read_bytes()).hexdigest()
    time.sleep(1.5)
    assert hashlib.sha256((tmp / "state" / "current.json").read_bytes()).hexdigest() == digest
    assert _status(tmp)["last_poll"]["result"] == "unchanged"
    # polls reuse their TLS connection: far fewer connections than requests (while a bundle is refused the agent
    # also asks the dead first controller, so how many polls the steps above took depends on the machine's pace)
    served = tmp / "served"
    _wait("eight polls served", lambda: len((served / "requests").read_text()) >= 8)
    connections, requests = len((served / "connections").read_text()), len((served / "requests").read_text())
    assert requests >= 8 and connections <= requests / 2, (connections, requests)


def _trace(fleet, tmp, src, dst, port):
    proc = fleet.run("host", CLI + ["--state-dir", str(tmp / "state"), "--config", str(tmp / "agent.json"),
                                    "trace", "--src", src, "--dst", dst,
                                    "--port", port, "--json"], check=False,
                     env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    assert proc.returncode in (0, 3), proc.stderr
    return json.loads(proc.stdout)


def test_trace_runs_the_hosts_own_ruleset_in_the_kernel(world):
    fleet, publish, tmp = world
    publish(RULESET % 7001)
    _wait("serial 1 applied", lambda: _status(tmp).get("serial") == 1)
    live = fleet.run("host", ["nft", "-s", "list", "ruleset"]).stdout
    dropped = _trace(fleet, tmp, "10.77.0.1", "10.77.0.2", "tcp/5432")
    assert (dropped["direction"], dropped["allowed"], dropped["decided_by"]) == ("ingress", False, ["rule_1024_in"])
    assert dropped["ruleset"] == "serial 1 mode=enforce"
    six = _trace(fleet, tmp, fleet.addr6("ctl"), fleet.addr6("host"), "tcp/5432")
    assert (six["allowed"], six["decided_by"]) == (False, ["rule_1024_in"])
    allowed = _trace(fleet, tmp, "10.77.0.1", "10.77.0.2", "tcp/8080")
    assert allowed["allowed"] and allowed["result"] == "open"
    assert not _trace(fleet, tmp, "10.77.0.1", "10.77.0.2", "tcp/7001")["allowed"]
    # the host's own namespace is untouched: same ruleset, no namespace left behind
    assert fleet.run("host", ["nft", "-s", "list", "ruleset"]).stdout == live
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert "mseg-trace" not in namespaces
    proc = fleet.run("host", CLI + ["--state-dir", str(tmp / "state"), "--config", str(tmp / "agent.json"),
                                    "trace", "--src", "10.9.9.9", "--dst",
                                    "10.9.9.8", "--port", "tcp/1"], check=False,
                     env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    assert proc.returncode == 1 and "must be an address of this host" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_agent_stands_down_for_an_emergency_bypass_it_did_not_apply(world):
    """Issue 15 item 7: a bypass loaded behind the agent (mseg.fleet.bypass before the agent came, the boot restore of
    a persisted bypass, a hand) is never replaced by the agent's next bundle; lifting it hands the table back."""
    from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset
    fleet, publish, tmp = world
    publish(RULESET % 7101)
    _wait("serial 1 applied", lambda: _status(tmp).get("serial") == 1)
    fleet.run("host", ["nft", "-f", "-"], input=bypass_ruleset("host"))
    publish(RULESET % 7102)
    _wait("serial 2 verified and held", lambda: _status(tmp).get("serial") == 2)
    time.sleep(1.5)  # several polls
    listing = fleet.run("host", ["nft", "list", "table", "inet", "mseg"]).stdout
    assert "emergency_bypass" in listing and "7102" not in listing
    assert fleet.probe("ctl", "host", 7102, timeout=0.5) == CONNECTED
    assert "stands down" in (tmp / "runtime.log").read_text()
    fleet.run("host", ["nft", "delete", "table", "inet", "mseg"])  # lifted
    _wait("the held policy applied", lambda: "tcp dport 7102 drop" in fleet.run(
        "host", ["nft", "list", "ruleset"]).stdout)
    assert "the foreign emergency bypass is gone" in (tmp / "runtime.log").read_text()


def test_boot_restore_fails_closed_when_the_stored_bundle_fails(world):
    """Issue 15 item 10: at boot, a stored bundle that no longer verifies (truncated) left the host with no table.
    Now the restore loads the agent's persisted judged copy of the last applied ruleset, else the fail-closed
    table that keeps SSH open (nft_apply's own restore script, with real nft)."""
    fleet, publish, tmp = world
    publish(RULESET % 7201)
    _wait("serial 1 applied", lambda: _status(tmp).get("serial") == 1)
    publish.agent.terminate()
    publish.agent.wait(10)
    (tmp / "state" / "current.json").write_bytes(b'{"payload": "trunc')

    def boot():
        fleet.run("host", ["nft", "delete", "table", "inet", "mseg"])  # a reboot: no table
        proc = fleet.run("host", CLI + ["--config", str(tmp / "agent.json"), "restore"], check=False,
                         env=dict(os.environ, PYTHONPATH=COLLECTIONS))
        assert proc.returncode == 1, proc.stderr
        return fleet.run("host", ["nft", "list", "table", "inet", "mseg"]).stdout

    listing = boot()
    assert "tcp dport 7201 drop" in listing and "mode_failsafe" not in listing
    persisted = tmp / "state" / "nft" / "ruleset.json"
    persisted.write_text(persisted.read_text()[:-40])  # truncated too: the fail-closed table
    listing = boot()
    assert "mode_failsafe" in listing and "policy drop" in listing and "tcp dport 22 accept" in listing
    assert "7201" not in listing
