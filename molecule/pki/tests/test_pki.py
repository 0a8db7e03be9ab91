"""mseg.fleet.pki on lab hosts: real TLS 1.3 handshakes between lab hosts with the certificates the role issued.

The controller (pki-ctl-01) runs `openssl s_server` with its controller certificate, restricted to TLS 1.3 and
requiring a client certificate from the fleet CA; agents connect with `openssl s_client` and their agent
certificate. A connection counts as accepted only when the server answered the HTTP request after verifying the
client (s_server -www echoes the client certificate it verified).

That a TLS 1.2 client is refused is not tested here: this scenario's server is `openssl s_server -tls1_3`, so
such a test would only prove the flag, not anything the role does (the role issues certificates, it does not
configure servers). The controller scenario proves it against the real nginx configuration
(molecule/controller/tests/test_controller.py, test_tls_1_2_is_refused).
"""

import calendar
import json
import os
import pathlib
import re
import subprocess
import time

import pytest
import testinfra
import testinfra.utils.ansible_runner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
testinfra_hosts = RUNNER.get_hosts("all")

TLS = "/etc/mseg/tls"
CONTROLLER, AGENT, REVOKED = "pki-ctl-01", "pki-agent-01", "pki-agent-02"
STRICT_PORT = 8443  # TLS 1.3 only, client certificate required, CRL checked
NO_CRL_PORT = 8444  # the same without the CRL check: shows that the CRL is what refuses the revoked host
HTTP_GET = r"printf 'GET / HTTP/1.0\r\n\r\n'"


def _host(name):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, INVENTORY))


def _address(name):
    return RUNNER.get_variables(name)["ansible_host"]


def _ca_dir():
    return pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki-ca"


def _serial_and_end(host, profile="agent"):
    out = host.check_output("openssl x509 -in %s/%s.crt -noout -serial -enddate", TLS, profile)
    fields = dict(line.split("=", 1) for line in out.splitlines())
    end = calendar.timegm(time.strptime(fields["notAfter"], "%b %d %H:%M:%S %Y GMT"))
    return fields["serial"], end


@pytest.fixture(scope="module")
def servers():
    controller = _host(CONTROLLER)
    common = (
        "openssl s_server -www -tls1_3 -cert {tls}/controller.crt -key {tls}/controller.key "
        "-CAfile {tls}/ca.crt -Verify 1 -verify_return_error".format(tls=TLS)
    )
    commands = {
        STRICT_PORT: common + " -crl_check -CRL %s/crl.pem -accept %d" % (TLS, STRICT_PORT),
        NO_CRL_PORT: common + " -accept %d" % NO_CRL_PORT,
    }
    for port, command in commands.items():
        unit = "mseg-pki-test-%d" % port
        controller.run("systemctl stop %s; systemctl reset-failed %s", unit, unit)
        # The command is passed as words, not as one quoted argument.
        controller.check_output("systemd-run --unit=%s --property=RuntimeMaxSec=900 " % unit + command)
    deadline = time.time() + 30
    while time.time() < deadline:
        listening = controller.check_output("ss -Htln")
        if all(re.search(r":%d\b" % port, listening) for port in commands):
            break
        time.sleep(0.5)
    else:
        pytest.fail("openssl s_server did not start on %s: %s" % (CONTROLLER, controller.run("journalctl -u 'mseg-pki-test-*' --no-pager").stdout))
    yield commands
    for port in commands:
        controller.run("systemctl stop mseg-pki-test-%d" % port)


def _connect(client, cert, key, port=STRICT_PORT):
    """One TLS 1.3 connection from `client` to the controller; returns (accepted, full output)."""
    result = client.run(
        "%s | timeout 30 openssl s_client -connect %s:%d -tls1_3 -cert %s -key %s -CAfile %s/ca.crt "
        "-verify_return_error -verify_hostname %s -ign_eof 2>&1"
        % (HTTP_GET, _address(CONTROLLER), port, cert, key, TLS, CONTROLLER)
    )
    accepted = result.rc == 0 and "HTTP/1.0 200 ok" in result.stdout
    return accepted, result.stdout


def test_agent_and_controller_complete_a_tls13_mutual_handshake(servers):
    accepted, out = _connect(_host(AGENT), "%s/agent.crt" % TLS, "%s/agent.key" % TLS)
    assert accepted, out
    assert "Verification: OK" in out  # the agent verified the controller's certificate and name
    assert re.search(r"New, TLSv1\.3, Cipher is TLS_", out), out
    assert "Subject: CN=%s" % AGENT in out  # the controller verified the agent's certificate


def test_certificate_from_another_ca_is_refused(servers):
    agent = _host(AGENT)
    scratch = agent.check_output("mktemp -d")
    try:
        # A rogue CA and a client certificate that claims to be the agent, with every usage the real one has.
        agent.check_output(
            "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
            "-subj '/CN=rogue CA' -keyout ca.key -out ca.crt "
            "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>&1 && "
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=%s' "
            "-keyout agent.key -out agent.csr 2>&1 && "
            "printf 'extendedKeyUsage=clientAuth\\nsubjectAltName=DNS:%s\\n' > ext.cnf && "
            "openssl x509 -req -in agent.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
            "-extfile ext.cnf -out agent.crt 2>&1",
            scratch, AGENT, AGENT,
        )
        accepted, out = _connect(agent, "%s/agent.crt" % scratch, "%s/agent.key" % scratch)
        assert not accepted, out
        # Control: the rogue certificate is well-formed and would be accepted by its own CA.
        verify = agent.run("openssl verify -CAfile %s/ca.crt %s/agent.crt", scratch, scratch)
        assert verify.rc == 0, verify.stdout + verify.stderr
    finally:
        agent.run("rm -rf %s", scratch)


def test_revoked_certificate_is_refused_when_the_crl_is_checked(servers):
    revoked = _host(REVOKED)
    serial = revoked.check_output("openssl x509 -in %s/agent.crt -noout -serial", TLS).split("=", 1)[1]
    crl = _host(CONTROLLER).check_output("openssl crl -in %s/crl.pem -noout -text", TLS)
    assert "Serial Number: %s" % serial in crl
    accepted, out = _connect(revoked, "%s/agent.crt" % TLS, "%s/agent.key" % TLS)
    assert not accepted, out
    # The same certificate passes a server that does not check the CRL: the revocation is what refuses it.
    accepted, out = _connect(revoked, "%s/agent.crt" % TLS, "%s/agent.key" % TLS, port=NO_CRL_PORT)
    assert accepted, out


def test_key_files_and_directories(host):
    name = host.backend.get_hostname()
    for directory in ("/etc/mseg", TLS):
        item = host.file(directory)
        assert item.is_directory and item.mode == 0o700 and item.user == "root", directory
    profiles = {"agent": "mseg-agent"}
    if name == CONTROLLER:
        profiles["controller"] = "www-data"
    for profile, owner in profiles.items():
        key = host.file("%s/%s.key" % (TLS, profile))
        assert key.mode == 0o600, profile
        assert key.user == owner, profile
        # The key and the installed certificate belong together.
        pub_key = host.check_output("openssl pkey -in %s/%s.key -pubout", TLS, profile)
        pub_cert = host.check_output("openssl x509 -in %s/%s.crt -noout -pubkey", TLS, profile)
        assert pub_key == pub_cert
    # The CRL is on every host: the controller checks agents with it, agents check the controller.
    assert host.file("%s/crl.pem" % TLS).exists


def test_certificate_names_and_usages(host):
    name = host.backend.get_hostname()
    profiles = ["agent", "controller"] if name == CONTROLLER else ["agent"]
    for profile in profiles:
        text = host.check_output("openssl x509 -in %s/%s.crt -noout -subject -ext subjectAltName,extendedKeyUsage", TLS, profile)
        assert "subject=CN = %s\n" % name in text + "\n", text
        assert "DNS:%s" % name in text
        assert "IP Address:%s" % _address(name) in text
        usage = "TLS Web Server Authentication" if profile == "controller" else "TLS Web Client Authentication"
        assert usage in text
        assert ("DNS:controller.mseg.test" in text) == (name == CONTROLLER)
        chain = host.run("openssl verify -CAfile %s/ca.crt %s/%s.crt", TLS, TLS, profile)
        assert chain.rc == 0, chain.stdout + chain.stderr


def test_no_host_private_key_on_the_control_node():
    """Scan every directory the control node used for this scenario for PEM private keys.

    The only private key allowed is the CA's, and it must be encrypted. (The lab hosts' own disks are overlay
    directories on this machine; they belong to the hosts, not to Ansible's control node, and are not scanned.)
    """
    ephemeral = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    ansible_tmp = pathlib.Path.home() / ".ansible" / "tmp"
    places = [_ca_dir(), ephemeral, pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]), ansible_tmp]
    # Other scenarios' scratch directories (other engineers' runs on this machine) are not this scenario's.
    others = [p for p in ansible_tmp.glob("molecule.*") if p != ephemeral]
    assert (_ca_dir() / "ca.key").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    scanned, found = 0, []
    for place in places:
        if not place.is_dir():
            continue
        for path in place.rglob("*"):
            if any(other in path.parents for other in others):
                continue
            if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
                continue
            scanned += 1
            data = path.read_bytes()
            for kind in re.findall(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\r?\n[A-Za-z0-9+/=:,. \r\n-]+?-----END", data):
                if kind == b"OPENSSH ":  # the lab's SSH client key
                    continue
                if kind == b"ENCRYPTED " and path == _ca_dir() / "ca.key":
                    continue
                found.append(str(path))
    assert scanned > 0
    assert not found, found
    # Every issued certificate is recorded (the serials the CRL needs), and nothing but certificates is.
    records = sorted(p.relative_to(_ca_dir() / "issued").as_posix() for p in (_ca_dir() / "issued").rglob("*.pem"))
    assert {r.split("/")[0] for r in records} == {CONTROLLER, AGENT, REVOKED}
    for record in (_ca_dir() / "issued").rglob("*.pem"):
        assert record.read_text().startswith("-----BEGIN CERTIFICATE-----")
    # The CA directory is 0700 throughout and every file in it (the CA key above all) 0600, as documented.
    modes = {p.relative_to(_ca_dir()).as_posix(): p.stat().st_mode & 0o777 for p in [_ca_dir(), *_ca_dir().rglob("*")]}
    assert modes["ca.key"] == 0o600
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != (0o700 if (_ca_dir() / name).is_dir() else 0o600)}
    assert not wrong, wrong


def _rotate(*extra):
    """Run mseg.fleet.rotate_certs on the agent only; return the play output."""
    command = ["ansible-playbook", "-i", INVENTORY, "mseg.fleet.rotate_certs", "--limit", AGENT]
    for variables in extra:
        command += ["-e", json.dumps(variables)]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    recap = re.search(r"^%s\s*:.*changed=(\d+)" % re.escape(AGENT), run.stdout, re.M)
    assert recap, run.stdout[-2000:]
    return run.stdout, int(recap.group(1))


def test_rotation_with_a_short_lived_certificate(servers):
    agent = _host(AGENT)
    before = _serial_and_end(agent)[0]

    # Issue a certificate that lives one day.
    out, changed = _rotate({"pki_validity": 1, "pki_force_renew": True})
    short, short_end = _serial_and_end(agent)
    assert changed and short != before
    assert short_end - time.time() < 2 * 86400
    assert "WARNING %s" % AGENT in out  # the expiry report warns about it

    # It expires within pki_renew_before (2 days): the next run reissues it without being forced.
    changed = _rotate({"pki_validity": 1, "pki_renew_before": 2})[1]
    again = _serial_and_end(agent)[0]
    assert changed and again != short

    # With the defaults (365 days, renew 30 days before) it is due as well, and is replaced by a long one, which
    # draws no warning. (That a long-lived certificate is kept is what the idempotence stage proves.)
    out, changed = _rotate()
    long_lived, long_end = _serial_and_end(agent)
    assert changed and long_lived != again
    assert long_end - time.time() > 300 * 86400
    assert "WARNING %s" % AGENT not in out

    # The controller accepts the rotated certificate, and every certificate was recorded for revocation.
    accepted, tls = _connect(agent, "%s/agent.crt" % TLS, "%s/agent.key" % TLS)
    assert accepted, tls
    recorded = {p.name for p in (_ca_dir() / "issued" / AGENT).glob("agent-*.pem")}
    for serial in (short, again, long_lived):
        assert "agent-%d.pem" % int(serial, 16) in recorded


def _names(host, profile="agent"):
    return host.check_output("openssl x509 -in %s/%s.crt -noout -ext subjectAltName", TLS, profile)


def _public_key(host, profile="agent"):
    return host.check_output("openssl x509 -in %s/%s.crt -noout -pubkey", TLS, profile)


def test_a_new_name_reissues_the_certificate(servers):
    """A name added with pki_extra_sans reissues the certificate on the next rotation, with the key kept.

    Nothing forces it and the certificate is far from expiry: the role hands the installed certificate to
    community.crypto, which compares it with the new request. A second identical run keeps it, and a run without
    the extra names reissues it again, which also leaves the agent as the other tests expect it.
    """
    agent = _host(AGENT)
    extra = {"pki_extra_sans": ["DNS:agent-alias.mseg.test", "IP:192.0.2.77"]}
    before, before_end = _serial_and_end(agent)
    assert before_end - time.time() > 300 * 86400  # not due for renewal: only the names can cause a reissue
    key = _public_key(agent)
    assert "agent-alias.mseg.test" not in _names(agent)
    try:
        changed = _rotate(extra)[1]
        renamed = _serial_and_end(agent)[0]
        assert changed and renamed != before
        names = _names(agent)
        assert "DNS:agent-alias.mseg.test" in names and "IP Address:192.0.2.77" in names, names
        assert "DNS:%s" % AGENT in names and "IP Address:%s" % _address(AGENT) in names, names
        assert _public_key(agent) == key  # a new name is no reason for a new key
        accepted, tls = _connect(agent, "%s/agent.crt" % TLS, "%s/agent.key" % TLS)
        assert accepted, tls

        # The same names again: nothing to do.
        changed = _rotate(extra)[1]
        assert changed == 0 and _serial_and_end(agent)[0] == renamed
    finally:
        # Back to the inventory's names (a reissue again), also when an assertion above failed.
        changed = _rotate()[1]
    restored = _serial_and_end(agent)[0]
    assert changed and restored not in (before, renamed)
    assert "agent-alias.mseg.test" not in _names(agent) and "192.0.2.77" not in _names(agent)
    recorded = {p.name for p in (_ca_dir() / "issued" / AGENT).glob("agent-*.pem")}
    for serial in (renamed, restored):
        assert "agent-%d.pem" % int(serial, 16) in recorded
