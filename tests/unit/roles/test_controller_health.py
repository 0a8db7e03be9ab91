"""keepalived's health check warns about a CRL near its next update, and never fails over for it: every replica has
the same CRL, so a check that failed for it would take the whole controller tier down at once."""

import datetime
import os
import re
import stat
import subprocess

import jinja2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TEMPLATE = os.path.join(ROOT, "roles", "controller", "templates", "usr", "local", "sbin", "mseg-controller-health.j2")


def write_crl(path, days_left):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
           .last_update(now - datetime.timedelta(days=1))
           .next_update(now + datetime.timedelta(days=days_left))
           .sign(key, hashes.SHA256()))
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def fake(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def check(tmp_path):
    """Render the health check for a replica whose TLS files are in tmp_path; return a runner."""
    with open(TEMPLATE, encoding="utf-8") as handle:
        script = jinja2.Template(handle.read(), undefined=jinja2.StrictUndefined).render(
            ansible_managed="test", inventory_hostname="ctl-01", controller_tls_dir=str(tmp_path),
            controller_operator_port=443, controller_crl_enforce=True, controller_crl_warn_days=30,
            __controller_health_run_dir=str(tmp_path))
    (tmp_path / "health").write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # curl stands in for a healthy nginx; logger records what would reach the journal
    fake(bin_dir, "curl", 'echo curl >>"%s"; exit 0' % (tmp_path / "calls"))
    fake(bin_dir, "logger", 'echo "logger $*" >>"%s"' % (tmp_path / "calls"))

    def run(days_left):
        write_crl(tmp_path / "crl.pem", days_left)
        for name in ("calls", "mseg-controller-health.crl-checked"):
            if (tmp_path / name).exists():
                (tmp_path / name).unlink()
        env = {"PATH": "%s:/usr/bin:/bin" % bin_dir}
        result = subprocess.run(["/bin/sh", str(tmp_path / "health")], env=env, timeout=30, check=False)
        calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
        return result.returncode, calls

    return run


def test_a_crl_near_its_next_update_warns_and_the_check_still_passes(check):
    code, calls = check(days_left=10)
    assert code == 0
    warning = [line for line in calls.splitlines() if line.startswith("logger ")]
    assert len(warning) == 1, calls
    assert "-p daemon.warning" in warning[0] and re.search(r"expires in (9|10) day\(s\)", warning[0]) and "mseg.fleet.pki" in warning[0]
    assert calls.splitlines()[-1] == "curl"


def test_a_fresh_crl_does_not_warn(check):
    assert check(days_left=180) == (0, "curl\n")


def test_the_crl_is_looked_at_once_an_hour_not_every_second(check, tmp_path):
    check(days_left=10)
    (tmp_path / "calls").unlink()
    env = {"PATH": "%s:/usr/bin:/bin" % (tmp_path / "bin")}
    assert subprocess.run(["/bin/sh", str(tmp_path / "health")], env=env, timeout=30, check=False).returncode == 0
    assert (tmp_path / "calls").read_text() == "curl\n"
