"""The pki role, run for real, signs only the identity the inventory gives a host, whatever the host returns.

Three hosts on a local connection share one run: ctl-01 is honest; web-01's Python returns a forged CSR (another
host's name, the controller identity, CA:TRUE, serverAuth); web-02's Python returns facts that shadow the
inventory's SAN variables. The CA must sign ctl-01's certificates and nothing for the other two, and say why.
"""

import ipaddress
import os
import shutil
import subprocess
import sys

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import CONTROLLER_IDENTITY  # noqa: E402

COMPROMISED = os.path.join(ROOT, "tests", "integration", "files", "compromised_python.py")
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or "ansible-playbook"
ENV = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"), ANSIBLE_NOCOLOR="1",
           ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
PLAY = [{"name": "The pki role", "hosts": "all", "gather_facts": False, "roles": [{"role": "mseg.fleet.pki"}]}]


def _forged_csr():
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctl-01")]))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.SubjectAlternativeName([
                   x509.DNSName("ctl-01"), x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
                   x509.UniformResourceIdentifier(CONTROLLER_IDENTITY)]), critical=False))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _launcher(path, *args):
    path.write_text('#!/bin/sh\nexec %s %s %s "$@"\n' % (sys.executable, COMPROMISED, " ".join(args)))
    path.chmod(0o755)
    return str(path)


def test_the_ca_signs_the_inventory_identity_and_refuses_forgeries(tmp_path):
    (tmp_path / "forged.csr").write_text(_forged_csr())
    hosts = {
        "ctl-01": {"pki_profiles": ["controller", "agent"], "ansible_host": "192.0.2.1",
                   "ansible_python_interpreter": sys.executable},
        "web-01": {"ansible_host": "192.0.2.11",
                   "ansible_python_interpreter": _launcher(tmp_path / "forge-csr", "forge-csr",
                                                           str(tmp_path / "forged.csr"))},
        "web-02": {"ansible_host": "192.0.2.12",
                   "ansible_python_interpreter": _launcher(tmp_path / "forge-facts", "forge-facts")},
    }
    for name, host in hosts.items():
        host["pki_tls_dir"] = str(tmp_path / name / "etc" / "tls")
    inventory = {"all": {"hosts": hosts, "vars": {
        "ansible_connection": "local", "pki_ca_dir": str(tmp_path / "ca"), "pki_host_packages": [],
        "pki_ca_passphrase": "integration-test-passphrase"}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(PLAY))
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    recap = {line.split()[0]: line for line in out.split("PLAY RECAP")[-1].splitlines() if " : ok=" in line}
    assert " failed=0 " in recap["ctl-01"] and " failed=1 " in recap["web-01"] and " failed=1 " in recap["web-02"], out
    # web-01: its forged CSR is refused, with every reason, and nothing is signed for it
    assert ("web-01: the agent CSR the host returned is refused and nothing was signed: its subject is 'CN=ctl-01', "
            "not exactly CN=web-01; " in out), out
    for reason in ("subject alternative names the inventory does not give this host: DNS:ctl-01, IP:192.0.2.1, URI:"
                   + CONTROLLER_IDENTITY, "not CA:FALSE", "its extended key usage is serverAuth, not clientAuth"):
        assert reason in out, (reason, out)
    # web-02: facts that would choose its names stop the signature
    assert "web-02 returned facts named pki_extra_sans" in out, out
    assert sorted(os.listdir(tmp_path / "ca" / "issued")) == ["ctl-01"]
    for name in ("web-01", "web-02"):
        assert not (tmp_path / name / "etc" / "tls" / "agent.crt").exists()
    # ctl-01: names from the inventory only (no host facts), the controller identity on its controller certificate
    for profile, usage in (("controller", ExtendedKeyUsageOID.SERVER_AUTH), ("agent", ExtendedKeyUsageOID.CLIENT_AUTH)):
        cert = x509.load_pem_x509_certificate((tmp_path / "ctl-01" / "etc" / "tls" / (profile + ".crt")).read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        expected = ["DNS:ctl-01", "IP:192.0.2.1"] + (["URI:" + CONTROLLER_IDENTITY] if profile == "controller" else [])
        have = (["DNS:" + n for n in sans.get_values_for_type(x509.DNSName)]
                + ["IP:%s" % a for a in sans.get_values_for_type(x509.IPAddress)]
                + ["URI:" + u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)])
        assert have == expected, (profile, have)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
