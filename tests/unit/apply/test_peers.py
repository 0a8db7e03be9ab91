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
