"""Management peers (plugins/module_utils/apply/peers.py): the controller's SSH address, in the same transaction."""

import os
import subprocess
import time

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply import peers
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.tests.unit.nft.samples import RULESET


@pytest.mark.parametrize("value,peer", [
    ("192.0.2.10 51234 192.0.2.1 22", ("192.0.2.10", 22)),
    ("2001:db8::10 51234 2001:db8::1 2222", ("2001:db8::10", 2222)),
    ("::ffff:192.0.2.10 51234 ::ffff:192.0.2.1 22", ("192.0.2.10", 22)),
    ("fe80::1%eth0 51234 fe80::2%eth0 22", ("fe80::1", 22)),
    ("192.0.2.10 51234 22", ("192.0.2.10", 22)),
    ("", None),
    ("not-an-ip 1 2 3", None),
    ("192.0.2.10 1 192.0.2.1 70000", None),
])
def test_parse_ssh_connection(value, peer):
    assert peers.parse_ssh_connection(value) == peer


def test_detect_peer_from_environment_first():
    assert peers.detect_ssh_peer({"SSH_CONNECTION": "192.0.2.9 1 192.0.2.1 22"}, pid=1) == ("192.0.2.9", 22)
    assert peers.detect_ssh_peer({"SSH_CLIENT": "192.0.2.8 1 2022"}, pid=1) == ("192.0.2.8", 2022)


def test_detect_peer_walks_up_to_an_ancestor_that_has_it():
    env = dict(os.environ, SSH_CONNECTION="198.51.100.7 40000 198.51.100.1 22")
    ancestor = subprocess.Popen(["sh", "-c", "env -u SSH_CONNECTION sleep 30; true"], env=env)
    try:
        child = None
        for dummy in range(100):  # the sleep child of the shell
            out = subprocess.run(["pgrep", "-P", str(ancestor.pid)], capture_output=True, text=True,
                                 check=False).stdout.split()
            if out:
                child = int(out[0])
                break
            time.sleep(0.02)
        assert child
        with open("/proc/%d/environ" % child, "rb") as handle:
            assert b"SSH_CONNECTION" not in handle.read()  # as after sudo: only an ancestor has it
        stripped = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        assert peers.detect_ssh_peer(stripped, pid=child) == ("198.51.100.7", 22)
    finally:
        ancestor.kill()
        ancestor.wait()


def test_no_peer_without_ssh():
    assert peers.detect_ssh_peer({}, pid=1) is None


def test_build_transaction_adds_elements_in_the_same_transaction():
    text = peers.build_transaction(RULESET, [("2001:db8::5", 22), ("192.0.2.5", 2222)])
    assert text.startswith(peers.PREAMBLE + "#!/usr/sbin/nft -f\n")
    assert text.endswith("add element inet mseg mgmt_auto_v4 { 192.0.2.5 . 2222 }\n"
                         "add element inet mseg mgmt_auto_v6 { 2001:db8::5 . 22 }\n")
    assert peers.build_transaction(RULESET, []) == peers.PREAMBLE + RULESET


def test_build_transaction_needs_the_management_set():
    content = RULESET.replace("set mgmt_auto_v6", "set other_v6")
    with pytest.raises(MsegError) as err:
        peers.build_transaction(content, [("2001:db8::5", 22)])
    assert "does not declare set mgmt_auto_v6" in str(err.value) and "management_auto: false" in str(err.value)


def _fake_proc(root, table):
    """A process table: pid -> (comm, ppid, starttime in clock ticks), as /proc shows it."""
    for pid, (comm, ppid, start) in table.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "comm").write_text(comm + "\n")
        fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 5
        (root / str(pid) / "stat").write_text("%d (%s) %s\n" % (pid, comm, " ".join(fields)))
    return str(root)


@pytest.mark.parametrize("session", ["sshd", "sshd-session"])
def test_connection_start_is_found_with_old_and_new_openssh(tmp_path, session):
    """OpenSSH >= 9.8 runs each connection as sshd-session: the proof must not silently turn off with it."""
    ticks = os.sysconf("SC_CLK_TCK")
    proc = _fake_proc(tmp_path, {
        100: ("sshd", 1, 5 * ticks),               # the listener
        200: (session, 100, 900 * ticks),          # the per-connection monitor, forked at accept()
        201: (session, 200, 901 * ticks),          # its unprivileged child
        300: ("bash", 201, 902 * ticks),
        301: ("sudo", 300, 903 * ticks),
        302: ("python3", 301, 904 * ticks),
    })
    assert peers.ssh_connection_started(302, proc) == 900


def test_no_connection_start_without_an_sshd_ancestor(tmp_path):
    proc = _fake_proc(tmp_path, {100: ("systemd", 1, 1), 200: ("cron", 100, 2), 300: ("python3", 200, 3)})
    assert peers.ssh_connection_started(300, proc) is None


def test_auto_peers_of_an_earlier_run_are_replaced_not_kept():
    """A backup listing carries the peers of the run that applied it; restoring it must not bring them back."""
    listing = ("table inet mseg {\n"
               "\tset mgmt_auto_v4 {\n\t\ttype ipv4_addr . inet_service\n"
               "\t\telements = { 198.51.100.7 . 22,\n\t\t\t     198.51.100.8 . 22 }\n\t}\n"
               "\tset mgmt_auto_v6 {\n\t\ttype ipv6_addr . inet_service\n\t\telements = { 2001:db8::7 . 22 }\n\t}\n"
               "\tset mgmt_1_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.0/8 }\n\t}\n"
               "}\n"
               "add element inet mseg mgmt_auto_v4 { 198.51.100.9 . 22 }\n")
    text = peers.build_transaction(listing, [("192.0.2.5", 22)])
    for old in ("198.51.100.7", "198.51.100.8", "198.51.100.9", "2001:db8::7"):
        assert old not in text
    assert "elements = { 10.0.0.0/8 }" in text  # the operator's management entries stay
    assert text.endswith("add element inet mseg mgmt_auto_v4 { 192.0.2.5 . 22 }\n")
