"""mseg.fleet.nft_apply over real SSH on a lab host (systemd-nspawn, its own systemd and nftables).

Boots a private one-host lab (its own name, bridge and subnet, so it never meets `make lab-up`'s
"demo" lab), then proves what only a real SSH connection and a real systemd can:
the lock-out rollback of commit-confirmed, the automatic management entry, and the boot unit
with its fail-closed journal message.
"""

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
from ansible_collections.mseg.fleet.plugins.module_utils._lab import lab as labutil  # noqa: E402  (plain Python)

from test_nft_apply import ruleset  # noqa: E402

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
CLOSED = ruleset(peers=("192.0.2.1",))  # enforce: nobody may open a connection, not even SSH


def _usable():
    if os.geteuid() != 0:
        return False, "the lab needs root"
    for tool in ("systemd-nspawn", "debootstrap", "ssh"):
        if not subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True, check=False).stdout:
            return False, "%s is not installed (make setup)" % tool
    return True, ""


OK, WHY = _usable()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


class LabHost:
    def __init__(self, info, key, tmp):
        self.address = info["ipv4"]
        self.key = key
        self.tmp = tmp
        self.controller = None
        self.took = 0.0

    def ssh(self, command, check=True, timeout=30, stdin=None):
        proc = subprocess.run(["ssh", "-i", self.key, "-o", "ConnectTimeout=5"] + SSH_OPTS +
                              ["root@" + self.address, command], capture_output=True, text=True, timeout=timeout,
                              input=stdin, check=False)
        if check and proc.returncode != 0:
            raise AssertionError("ssh %s: rc %d %s" % (command, proc.returncode, proc.stderr))
        return proc

    def reachable(self):
        return self.ssh("true", check=False).returncode == 0

    def listing(self):
        proc = self.ssh("nft -s list table inet mseg", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def play(self, args, timeout=240):
        (self.tmp / "inventory.ini").write_text(
            "lab ansible_host=%s ansible_user=root ansible_ssh_private_key_file=%s "
            "ansible_python_interpreter=/usr/bin/python3 ansible_ssh_common_args='%s'\n"
            % (self.address, self.key, " ".join(SSH_OPTS)))
        (self.tmp / "args.json").write_text(json.dumps({"nft_args": args}))
        (self.tmp / "play.yml").write_text(
            "- name: Apply\n  hosts: all\n  gather_facts: false\n  tasks:\n"
            "    - name: Apply the ruleset\n      mseg.fleet.nft_apply: \"{{ nft_args }}\"\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "ANSIBLE_"))}
        env.update(ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
                   ANSIBLE_TIMEOUT="5", ANSIBLE_LOCAL_TEMP=str(self.tmp / "ansible-local"),
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        started = time.monotonic()
        proc = subprocess.run(["ansible-playbook", "-i", str(self.tmp / "inventory.ini"), str(self.tmp / "play.yml"),
                               "-e", "@" + str(self.tmp / "args.json")],
                              capture_output=True, text=True, env=env, timeout=timeout, check=False)
        self.took = time.monotonic() - started
        try:
            result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["lab"]
        except (ValueError, KeyError, IndexError):
            raise AssertionError("ansible-playbook rc %d: %s %s" % (proc.returncode, proc.stdout, proc.stderr))
        return proc.returncode, result


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nftlab")
    name = "nfta" + secrets.token_hex(3)
    state_dir = str(tmp / "lab")
    cache = os.environ.get("MSEG_LAB_CACHE", "/var/cache/mseg-lab")
    try:
        up = labutil.lab_up(name, [{"name": "h1"}], state_dir, cache, boot_timeout=120)
        lab_host = LabHost(up["hosts"][0], up["private_key"], tmp)
        lab_host.controller = up["gateway_ipv4"]
        yield lab_host
    finally:
        try:
            labutil.lab_down(state_dir)
        except labutil.LabError:  # a guest still powering off keeps its cgroup busy for a moment
            time.sleep(5)
            labutil.lab_down(state_dir)


def _probe(address, port, timeout=1.0):
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    finally:
        sock.close()


def closure_tar():
    """The host packages of the collection the engine needs, as base64 text of a tar stream."""
    names = ["ansible_collections/mseg/fleet/plugins/module_utils/%s" % p for p in ("common", "apply", "nft")]
    tar = subprocess.run(["tar", "-c", "-h", "--exclude=__pycache__", "-C", os.path.join(ROOT, ".build", "collections")]
                         + names, capture_output=True, check=True).stdout
    return base64.b64encode(tar).decode("ascii")


def test_the_host_knows_when_this_ssh_connection_was_opened(host):
    """confirm() refuses a connection older than the apply; that needs the sshd connection's start time."""
    code = ("import sys; sys.path.insert(0, '/tmp/mseg-closure')\n"
            "from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import boottime, "
            "ssh_connection_started\nprint(ssh_connection_started(), boottime())\n")
    host.ssh("rm -rf /tmp/mseg-closure && mkdir -p /tmp/mseg-closure && base64 -d | tar -x -C /tmp/mseg-closure",
             stdin=closure_tar())
    before = time.monotonic()
    started, now = (float(v) for v in host.ssh("python3 -", stdin=code).stdout.split())
    elapsed = time.monotonic() - before
    assert now - elapsed - 0.05 <= started <= now


def test_lockout_rolls_back_by_itself_over_real_ssh(host):
    rc, res = host.play({"content": ruleset(policy="accept")})
    assert rc == 0 and res["changed"], res
    before = host.listing()

    rc, res = host.play({"content": CLOSED, "management_auto": False, "confirm_timeout": 8})
    assert rc != 0 and res["failed"] and res["rolled_back"] is True, res
    assert res["msg"].startswith("rolled back:") and "no confirmation" in res["msg"]
    assert 8 <= host.took < 8 + 90  # the controller could not get back in before the host rolled back
    assert host.reachable()
    assert host.listing() == before
    assert "policy accept" in host.ssh("cat /etc/mseg/ruleset.nft").stdout  # persisted file untouched


def test_auto_management_keeps_the_controller_in(host):
    rc, res = host.play({"content": CLOSED, "confirm_timeout": 20})
    assert rc == 0 and res["changed"] and res["rolled_back"] is False, res
    assert res["management_peers"] == ["%s . 22" % host.controller]
    assert "%s . 22" % host.controller in host.listing()
    assert host.reachable()  # a fresh connection
    host.ssh("systemd-run --unit mseg-test-listener -p RuntimeMaxSec=60 python3 -m http.server 8080")
    assert _probe(host.address, 8080) == "timeout"  # everything else stays closed
    rc, res = host.play({"content": CLOSED, "confirm_timeout": 20})
    assert rc == 0 and res["changed"] is False


def test_boot_unit_restores_and_fails_closed_under_systemd(host):
    rc, res = host.play({"content": ruleset(policy="accept")})
    assert rc == 0, res
    applied = host.listing()
    assert host.ssh("systemctl is-enabled mseg-restore.service").stdout.strip() == "enabled"
    deps = host.ssh("systemctl show -p After -p Before -p Wants mseg-restore.service").stdout
    assert "nftables.service" in deps.split("After=")[1].split("\n")[0]
    assert "network-pre.target" in deps.split("Before=")[1].split("\n")[0]

    host.ssh("nft delete table inet mseg && systemctl restart mseg-restore.service")
    assert host.listing() == applied

    host.ssh("sed -i 's/8080/8081/' /etc/mseg/ruleset.json")  # what the boot restore loads
    proc = host.ssh("systemctl restart mseg-restore.service", check=False)
    assert proc.returncode != 0
    journal = host.ssh("journalctl -u mseg-restore.service --no-pager -o cat").stdout
    assert "is corrupt" in journal and "fail-closed" in journal
    assert "mode_failsafe" in host.listing()
    assert host.reachable()  # SSH is let in by the fail-closed table

    rc, res = host.play({"content": ruleset(policy="accept")})
    assert rc == 0 and res["changed"], res  # the repaired persisted copy counts as a change
    host.ssh("systemctl restart mseg-restore.service")
    assert host.listing() == applied
