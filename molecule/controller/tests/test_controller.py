"""mseg.fleet.controller on lab hosts: real mutual-TLS requests from the agents to two replicas and their VIP.

Every bundle a test receives is checked with the engine's own ``bundle.verify`` (the code the agent runs) and the
public key from the control node, so "got a bundle" always means "got a bundle signed for this host".
"""

import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
import testinfra
import testinfra.utils.ansible_runner

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / ".build" / "collections"))
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle  # noqa: E402  pylint: disable=wrong-import-position

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
testinfra_hosts = ["agent-01"]

CONTROLLERS = ("ctl-01", "ctl-02")
AGENT, REVOKED = "agent-01", "agent-02"
VIP = "10.213.241.100"
TLS = "/etc/mseg/tls"
CURL = "curl --silent --show-error --max-time 5 --cacert %s/ca.crt" % TLS
AGENT_CERT = "--cert %s/agent.crt --key %s/agent.key" % (TLS, TLS)
Reply = collections.namedtuple("Reply", ("rc", "status", "headers", "body"))


def _host(name):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, INVENTORY))


def _public_key():
    return (pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "bundles" / "bundle-signing.pub").read_bytes()


def _get(client, url, options=AGENT_CERT, headers=()):
    """GET from a lab host with curl; return a Reply (curl exit code, HTTP status or 0, headers dict, body)."""
    extra = " ".join("-H %s" % _quote(h) for h in headers)
    marker = "__MSEG_STATUS__"
    run = client.run("%s %s %s -D - -w '\\n%s%%{http_code}' %s" % (CURL, options, extra, marker, _quote(url)))
    out = run.stdout
    if marker not in out:
        return Reply(run.rc, 0, {}, "")
    text, status = out.rsplit("\n" + marker, 1)
    head, body = text.split("\r\n\r\n", 1) if "\r\n\r\n" in text else (text, "")
    fields = {}
    for line in head.split("\r\n")[1:]:
        name, value = line.split(":", 1)
        fields[name.strip().lower()] = value.strip()
    return Reply(run.rc, int(status), fields, body)


def _quote(text):
    return "'%s'" % text.replace("'", "'\\''")


def _verify(body, host=AGENT):
    return bundle.verify(body.encode(), _public_key(), host, None, time.time())


def _diagnostics():
    """Service states and recent journal of both replicas, for an assertion message."""
    return "\n".join(_host(name).run(
        "systemctl is-active nginx keepalived; journalctl --no-pager -n 15 -u nginx -u keepalived "
        "-u mseg-controller-tls").stdout for name in CONTROLLERS)


def _vip_holder(wait=10.0):
    """The replica holding the VIP; a takeover in progress (no holder for a moment) is waited for."""
    deadline = time.time() + wait
    while True:
        holders = [name for name in CONTROLLERS if VIP in _host(name).check_output("ip -4 -o addr show")]
        if len(holders) == 1 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len(holders) == 1, "the VIP must be on exactly one replica, found %s\n%s" % (holders, _diagnostics())
    return holders[0]


def _publish(*args):
    """Run mseg.fleet.publish; return its output."""
    command = ["ansible-playbook", "-i", INVENTORY, "mseg.fleet.publish"] + list(args)
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return run.stdout


def _serial(name):
    run = _host(name).run("%s %s https://%s/v1/release" % (CURL, AGENT_CERT, name))
    assert run.rc == 0, "%s does not answer on 443: %s\n%s" % (name, run.stderr, _diagnostics())
    return json.loads(run.stdout)["serial"]


@pytest.mark.parametrize("target", list(CONTROLLERS) + [VIP])
def test_agent_gets_its_own_bundle_then_304(host, target):
    reply = _get(host, "https://%s:8443/v1/bundle" % target)
    assert (reply.rc, reply.status) == (0, 200), reply.body
    fetched = _verify(reply.body)
    assert fetched.host == AGENT and fetched.serial == _serial(CONTROLLERS[0])
    assert reply.headers["content-type"] == "application/json"
    again = _get(host, "https://%s:8443/v1/bundle" % target, headers=["If-None-Match: " + reply.headers["etag"]])
    assert (again.rc, again.status, again.body) == (0, 304, "")


def test_every_replica_gives_the_same_etag(host):
    etags = {_get(host, "https://%s:8443/v1/bundle" % name).headers["etag"] for name in CONTROLLERS}
    assert len(etags) == 1


@pytest.mark.parametrize("path", [
    "/v1/bundle?host=ctl-01", "/v1/bundle/ctl-01", "/ctl-01.json", "/current/ctl-01.json", "/releases/1/ctl-01.json",
    "/v1/bundle/../ctl-01.json", "/v1/%2e%2e/ctl-01.json", "/.release.json", "/v1/bundle%2F..%2Fctl-01.json",
])
def test_no_url_reaches_another_hosts_bundle(host, path):
    # ctl-01's bundle is on the replica: what keeps it from agent-01 is the server, not its absence.
    assert _host("ctl-01").file("/var/lib/mseg-controller/current/ctl-01.json").exists
    reply = _get(host, "https://ctl-01:8443" + path, headers=["X-Forwarded-For: ctl-01"])
    if reply.status == 200:
        assert _verify(reply.body).host == AGENT
    else:
        assert reply.status in (403, 404), reply
        assert "payload" not in reply.body


def test_a_host_header_does_not_pick_the_bundle(host):
    reply = _get(host, "https://ctl-01:8443/v1/bundle", headers=["Host: ctl-01"])
    assert reply.status == 200 and _verify(reply.body).host == AGENT


def test_no_client_certificate_is_refused(host):
    reply = _get(host, "https://ctl-01:8443/v1/bundle", options="")
    assert reply.status == 400 and "payload" not in reply.body


def _other_ca_certificate(client, name):
    """curl options for a client certificate CN=<name> (clientAuth) from a CA the controllers do not trust."""
    where = "/tmp/other-ca-%s" % name
    client.check_output(
        "set -e; d=$(mktemp -d /tmp/other-ca.XXXXXX); cd $d; "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=other-ca "
        "-keyout ca.key -out ca.crt 2>/dev/null; "
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=%s "
        "-keyout client.key -out client.csr 2>/dev/null; "
        "printf 'extendedKeyUsage=clientAuth\\n' > ext; "
        "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext "
        "-out client.crt 2>/dev/null; rm -rf %s; mv $d %s" % (name, where, where))
    return "--cert %s/client.crt --key %s/client.key" % (where, where)


def test_certificate_from_another_ca_is_refused(host):
    """A certificate for the right name (CN=agent-01) issued by a CA the controllers do not trust."""
    reply = _get(host, "https://ctl-01:8443/v1/bundle", options=_other_ca_certificate(host, AGENT))
    assert reply.status == 400 and "payload" not in reply.body


def test_revoked_certificate_is_refused():
    """converge revoked agent-02 in a run limited to agent-02 (mseg_hosts): the CRL reached both controllers."""
    revoked = _host(REVOKED)
    for controller in ("ctl-01", "ctl-02"):
        reply = _get(revoked, "https://%s:8443/v1/bundle" % controller)
        assert reply.status == 400 and "payload" not in reply.body, controller
    # The CRL is what refused it: the certificate itself is still within its validity.
    assert revoked.run("openssl x509 -checkend 3600 -noout -in %s/agent.crt", TLS).rc == 0
    time.sleep(1.5)  # the access log is flushed every second
    log = _host("ctl-01").check_output("cat /var/log/mseg-controller/agents.access.log")
    assert re.search(r'"CN=agent-02" FAILED:certificate revoked', log), log[-2000:]


def test_a_vip_the_certificate_does_not_name_is_refused_before_anything_changes():
    """pki put the VIP (10.213.241.100) into the controller certificates; another VIP would make every agent fail
    its first controller with an IP address mismatch, so the role stops first and names the fix."""
    before = _host("ctl-01").check_output("md5sum /etc/keepalived/keepalived.conf")
    command = ["ansible-playbook", "-i", INVENTORY, "mseg.fleet.controller", "-e", "controller_vip=10.213.241.99"]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert run.returncode != 0
    output = run.stdout + run.stderr  # the failure message goes to stderr with the default callback
    assert "does not name controller_vip 10.213.241.99" in output and "Run mseg.fleet.pki" in output, output[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    assert _host("ctl-01").check_output("md5sum /etc/keepalived/keepalived.conf") == before


@pytest.mark.parametrize("port", [8443, 443])
def test_tls_1_2_is_refused(host, port):
    old = _get(host, "https://ctl-01:%d/healthz" % port, options=AGENT_CERT + " --tlsv1.2 --tls-max 1.2")
    assert old.rc == 35 and old.status == 0  # handshake failure: no HTTP at all
    new = _get(host, "https://ctl-01:%d/healthz" % port, options=AGENT_CERT + " --tlsv1.3")
    # the handshake succeeds; 8443 has no /healthz (404) and 443 does not serve agent-01, which is not listed (403)
    assert new.rc == 0 and new.status == {8443: 404, 443: 403}[port]


def test_only_get(host):
    assert _get(host, "https://ctl-01:8443/v1/bundle", options=AGENT_CERT + " -X POST").status == 403


@pytest.mark.parametrize("target", ["ctl-01", VIP])
def test_operator_listener_serves_a_listed_certificate_read_only(target):
    """ctl-02's own client certificate (CN=ctl-02, listed in controller_operator_clients by default)."""
    operator = _host("ctl-02")
    reply = _get(operator, "https://%s/healthz" % target)
    assert reply.status == 200, reply
    release = json.loads(reply.body)
    assert release["serial"] >= 1 and release["hosts"] == 4
    assert json.loads(_get(operator, "https://%s/v1/release" % target).body) == release
    assert "Active connections" in _get(operator, "https://%s/v1/nginx_status" % target).body
    assert _get(operator, "https://%s/healthz" % target, options=AGENT_CERT + " -X PUT").status == 403
    assert _get(operator, "https://%s/v1/bundle" % target).status == 404


@pytest.mark.parametrize("client", [AGENT, "ctl-02"])
def test_operator_listener_refuses_no_client_certificate(client):
    """Neither an agent nor a replica gets anything from 443 without a certificate: the TLS layer refuses (400)."""
    for path in ("/healthz", "/v1/release", "/v1/nginx_status"):
        reply = _get(_host(client), "https://ctl-01" + path, options="")
        assert reply.status == 400, reply
        assert "serial" not in reply.body and "Active connections" not in reply.body


def test_operator_listener_refuses_another_ca(host):
    """A certificate claiming a listed name (CN=ctl-02) from a CA the controllers do not trust."""
    reply = _get(host, "https://ctl-01/healthz", options=_other_ca_certificate(host, "ctl-02"))
    assert reply.status == 400 and "serial" not in reply.body, reply


def test_operator_listener_refuses_a_revoked_certificate():
    """agent-02 is listed in controller_operator_clients (molecule.yml): only the CRL keeps it out."""
    reply = _get(_host(REVOKED), "https://ctl-01/healthz")
    assert reply.status == 400 and "serial" not in reply.body, reply
    log = _host("ctl-01").check_output("cat /var/log/mseg-controller/operators.access.log")
    assert re.search(r'"CN=agent-02" FAILED:certificate revoked .*"GET /healthz', log), log[-2000:]


def test_operator_listener_refuses_a_valid_certificate_not_listed(host):
    """agent-01's certificate is valid (it gets its bundle on 8443) but agent-01 is not an operator: 403."""
    assert _get(host, "https://ctl-01:8443/v1/bundle").status == 200
    for path in ("/healthz", "/v1/release", "/v1/nginx_status"):
        reply = _get(host, "https://ctl-01" + path)
        assert reply.status == 403, reply
        assert "serial" not in reply.body and "Active connections" not in reply.body


def test_nginx_listens_only_on_the_two_mutual_tls_ports():
    """No other listener (no default site on 80, no plain-HTTP health port): every port nginx opens asks for a
    client certificate."""
    for name in CONTROLLERS:
        ctl = _host(name)
        ports = set(re.findall(r":(\d+)\s.*nginx", ctl.check_output("ss -Hltnp")))
        assert ports == {"443", "8443"}, ports
        config = ctl.check_output("nginx -T 2>/dev/null")
        assert config.count("ssl_verify_client on;") == 2 and "ssl_verify_client optional" not in config


def test_health_check_authenticates_with_the_replicas_certificate():
    """keepalived's check passes on each replica, and only because it presents the replica's certificate."""
    for name in CONTROLLERS:
        ctl = _host(name)
        assert ctl.run("/usr/local/sbin/mseg-controller-health").rc == 0, _diagnostics()
        without = ctl.run("sed '/--cert /d' /usr/local/sbin/mseg-controller-health | sh")
        assert without.rc != 0


FORGE = """
import base64, json, sys
archive = json.load(open(sys.argv[1]))
outer = json.loads(archive["bundles"]["agent-01"])
payload = json.loads(base64.b64decode(outer["payload"]))
payload["mode"] = "bypass"
outer["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).decode()
archive["bundles"]["agent-01"] = json.dumps(outer)
json.dump(archive, open(sys.argv[2], "w"))
"""


def test_a_forged_release_is_refused_and_logged():
    """A release whose agent-01 bundle was edited after signing (mode -> bypass) never reaches agent-01."""
    ctl = _host("ctl-01")
    before = ctl.check_output("readlink /var/lib/mseg-controller/current")
    ctl.check_output("python3 -c %s /var/lib/mseg-controller/incoming/release.json /root/forged.json", FORGE)
    result = ctl.ansible("mseg.fleet.bundle_release", "archive=/root/forged.json public_key=/var/lib/mseg-controller/bundle-signing.pub",
                         check=False, become=True)
    assert result["kind"] == "signature" and "(signature mismatch)" in result["msg"], result
    assert ctl.check_output("readlink /var/lib/mseg-controller/current") == before
    log = ctl.check_output("tail -n 1 /var/log/mseg-controller/publish.log")
    assert "refused /root/forged.json (signature mismatch): release" in log and "agent-01" in log


def test_nginx_reloads_when_the_crl_is_rewritten():
    """rotate_certs rewrites crl.pem; the path unit reloads nginx (new workers) so the new CRL is enforced."""
    ctl = _host("ctl-02")
    workers = "pgrep -x -P $(cat /run/nginx.pid) nginx | sort"
    before = ctl.check_output(workers)
    ctl.check_output("cp %s/crl.pem /root/crl.pem && cp /root/crl.pem %s/crl.pem", TLS, TLS)
    deadline = time.time() + 20
    while time.time() < deadline and ctl.check_output(workers) == before:
        time.sleep(0.5)
    assert ctl.check_output(workers) != before
    assert ctl.service("mseg-controller-tls.path").is_running


def test_the_role_leaves_nftables_alone():
    for name in CONTROLLERS:
        assert _host(name).run("nft list table inet mseg").rc != 0


def _start_loop(client, unit, script):
    client.run("systemctl stop %s; systemctl reset-failed %s", unit, unit)
    client.check_output("systemd-run --unit=%s --property=RuntimeMaxSec=600 /bin/sh -c %s", unit, script)


def _stop_loop(client, unit):
    client.run("systemctl stop %s", unit)


def _measure_gap(host, stop, start):
    """Poll the VIP every 50 ms while ``stop`` runs on the VIP holder; return (gap in s, old holder, new holder)."""
    out = "/tmp/vip-polls.txt"
    holder = _vip_holder()
    _start_loop(host, "mseg-vip-poll", "rm -f %s; while :; do c=$(%s %s -o /dev/null -w '%%{http_code}' --max-time 1 "
                "https://%s:8443/v1/bundle); echo \"$(date +%%s.%%N) $c\" >> %s; sleep 0.05; done"
                % (out, CURL, AGENT_CERT, VIP, out))
    time.sleep(2)
    _host(holder).check_output(stop)
    deadline = time.time() + 30
    while time.time() < deadline and VIP in _host(holder).check_output("ip -4 -o addr show"):
        time.sleep(0.5)
    time.sleep(3)
    _stop_loop(host, "mseg-vip-poll")
    new = _vip_holder()
    _host(holder).check_output(start)
    lines = [line.split() for line in host.check_output("cat %s", out).splitlines()]
    ok = [float(t) for t, code in lines if code == "200"]
    assert ok and lines[-1][1] == "200", lines[-20:]
    gap = max(b - a for a, b in zip(ok, ok[1:]))
    return gap, holder, new


@pytest.mark.parametrize("what", ["nginx", "keepalived"])
def test_vip_moves_when_the_active_controller_stops(host, what):
    gap, old, new = _measure_gap(host, "systemctl stop %s" % what, "systemctl start %s" % what)
    print("VIP failover after stopping %s on %s: %s took over, longest gap between answers %.2f s"
          % (what, old, new, gap))
    assert new != old
    assert gap < 8.0
    # nopreempt: the returning replica does not take the VIP back (no second failover).
    time.sleep(4)
    assert _vip_holder() == new


def test_publish_while_polling_never_serves_a_torn_bundle(host):
    """Agents poll both replicas without pause while the policy changes twice; ctl-02 misses the first publish
    (as if it were down) and catches up on the next run without a new signature."""
    before = _serial("ctl-01")
    for name in CONTROLLERS:
        _start_loop(host, "mseg-poll-%s" % name, "rm -f /tmp/polls-%s.txt; while :; do %s %s "
                    "https://%s:8443/v1/bundle >> /tmp/polls-%s.txt; echo >> /tmp/polls-%s.txt; done"
                    % (name, CURL, AGENT_CERT, name, name, name))
    try:
        _publish("--limit", "ctl-01", "-e", json.dumps({"mseg_mode": "enforce"}))
        assert _serial("ctl-01") == before + 1 and _serial("ctl-02") == before
        out = _publish("-e", json.dumps({"mseg_mode": "enforce"}))
        assert _serial("ctl-02") == before + 1
        assert re.search(r"^ctl-01\s*:.*changed=0", out, re.M), out[-3000:]
        _publish()
        assert _serial("ctl-01") == _serial("ctl-02") == before + 2
        time.sleep(1)
    finally:
        for name in CONTROLLERS:
            _stop_loop(host, "mseg-poll-%s" % name)
    for name in CONTROLLERS:
        lines = [line for line in host.check_output("cat /tmp/polls-%s.txt", name).splitlines() if line]
        serials = [_verify(line).serial for line in lines]  # raises on a torn or mixed bundle
        assert len(serials) > 20
        assert serials == sorted(serials), "%s went back in time: %s" % (name, serials)
        assert serials[0] == before and serials[-1] == before + 2
        modes = {_verify(line).serial: _verify(line).mode for line in (lines[0], lines[-1])}
        assert modes == {before: "observe", before + 2: "observe"}
    assert "installed release %d" % (before + 2) in _host("ctl-02").check_output("cat /var/log/mseg-controller/publish.log")
