"""The lab hosts are real systemd machines, reached over SSH, on one bridge, each with its own nftables."""

import json
import os
import subprocess

import pytest
import testinfra
import testinfra.utils.ansible_runner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
testinfra_hosts = RUNNER.get_hosts("lab_nodes")

CONNECT = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], 22), timeout=3)\n"
    "print(s.getpeername()[0], s.recv(64).decode().strip())\n"
)


def _peers(host):
    me = host.backend.get_hostname()
    return [name for name in testinfra_hosts if name != me]


def _address(name):
    return RUNNER.get_variables(name)["ansible_host"]


def test_systemd_is_pid_1_and_running(host):
    assert host.check_output("ps -o comm= -p 1") == "systemd"
    state = host.run("systemctl is-system-running --wait")
    assert state.stdout.strip() == "running", host.check_output("systemctl --failed --no-legend")


def test_reached_over_ssh_as_root(host):
    # testinfra runs commands through Ansible's ssh connection: sshd on the host sees a real session.
    assert host.check_output("id -un") == "root"
    assert host.check_output("printenv SSH_CONNECTION").split()[2] == _address(host.backend.get_hostname())
    assert host.service("ssh").is_running


def test_each_peer_answers_tcp_over_the_bridge(host):
    for peer in _peers(host):
        # The lab writes every host's IPv4 and IPv6 address into each host's /etc/hosts.
        ipv4 = host.check_output("getent ahostsv4 %s", peer).split()[0]
        ipv6 = host.check_output("getent ahostsv6 %s", peer).split()[0]
        assert ipv4 == _address(peer)
        assert ipv6.startswith("fd")
        for address in (ipv4, ipv6):
            result = host.run("python3 -c %s %s", CONNECT, address)
            assert result.rc == 0, result.stderr
            peer_address, banner = result.stdout.split(" ", 1)
            assert peer_address == address
            assert banner.startswith("SSH-2.0-")


def test_own_nftables_ruleset(host):
    name = host.backend.get_hostname()
    table = host.check_output("nft list table inet mseg_molecule_lab")
    assert 'comment "%s"' % name in table
    # The control node does not see the host's table: every host has its own network namespace.
    local = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert "mseg_molecule_lab" not in local


@pytest.fixture(scope="module")
def listeners():
    """A probe listener on every host for tcp/7, udp/7 (open) and tcp/9, udp/9 (dropped by converge's table)."""
    hosts = dict((name, testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, INVENTORY)))
                 for name in testinfra_hosts)
    for name, node in hosts.items():
        node.ansible("mseg.fleet.probe_listener", "ports=tcp/7,udp/7,tcp/9,udp/9 duration=120 hostname=%s" % name,
                     check=False)
    yield
    for node in hosts.values():
        node.ansible("mseg.fleet.probe_listener", "state=stopped", check=False)


def test_probe_tells_open_from_dropped_with_real_packets(host, listeners):
    for peer in _peers(host):
        ipv6 = host.check_output("getent ahostsv6 %s", peer).split()[0]
        targets = [{"name": peer, "address": address, "port": port}
                   for address in (_address(peer), ipv6) for port in ("tcp/7", "udp/7", "tcp/9", "udp/9")]
        probed = host.ansible("mseg.fleet.probe", json.dumps({"targets": targets, "timeout": 0.5}), check=False)
        outcome = dict(((r["address"], r["port"]), (r["result"], r["responder"])) for r in probed["results"])
        for address in (_address(peer), ipv6):
            assert outcome[(address, "tcp/7")] == ("open", peer)
            assert outcome[(address, "udp/7")] == ("open", peer)
            assert outcome[(address, "tcp/9")] == ("timeout", None)
            assert outcome[(address, "udp/9")] == ("timeout", None)
