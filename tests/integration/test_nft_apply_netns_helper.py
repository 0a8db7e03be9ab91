"""The namespace helper itself: real packets, real nftables verdicts, and no leftovers."""

import subprocess

import pytest

from netns import CONNECTED, REFUSED, TIMEOUT, Fleet, NetnsError, available

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

BLOCK = """
table inet t {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 81 reject with tcp reset
        tcp dport 82 drop
        udp dport 82 drop
    }
}
"""


def _netns_names():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split(" ")[0] for line in out.splitlines() if line}


def test_verdicts_v4_v6_tcp_udp():
    with Fleet(["a", "b"]) as f:
        f.run("b", ["nft", "-f", "-"], input=BLOCK)
        for family in (4, 6):
            assert f.probe("a", "b", 80, family=family) == CONNECTED
            assert f.probe("a", "b", 81, family=family) == REFUSED
            assert f.probe("a", "b", 82, family=family, timeout=0.3) == TIMEOUT
            assert f.probe("a", "b", 83, family=family, listen=False) == REFUSED
            assert f.udp_connect("a", "b", 80, family=family)
            assert f.probe("a", "b", 82, proto="udp", family=family, timeout=0.3) == TIMEOUT
        # the rules live in b only
        assert f.run("a", "nft list ruleset").stdout.strip() == ""


def test_listener_sees_peer_and_namespaces_are_removed():
    with Fleet(["x", "y", "z"]) as f:
        made = {name for name in _netns_names() if name.startswith(f.run_id + "-")}
        assert len(made) == 4  # three hosts and the hub
        with f.listen("z", 9000) as srv:
            assert f.tcp_connect("x", "z", 9000, listen=False)
            assert f.tcp_connect("y", "z", 9000, listen=False)
        assert sorted(srv.peers) == [f.addr("x"), f.addr("y")]
        assert f.run("x", "ip route").stdout.count("default") == 0
    assert _netns_names() & made == set()


def test_cleanup_after_exception_and_bad_names():
    fleet = Fleet(["a"])
    with pytest.raises(NetnsError):
        with fleet as f:
            assert any(n.startswith(fleet.run_id) for n in _netns_names())
            f.run("a", "exit 3")
    assert not any(n.startswith(fleet.run_id) for n in _netns_names())
    with pytest.raises(ValueError):
        Fleet(["Bad Name"])
    with pytest.raises(ValueError):
        Fleet(["a", "a"])
