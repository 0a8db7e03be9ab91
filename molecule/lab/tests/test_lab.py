"""The lab hosts are real systemd machines, reached over SSH, on one bridge, each with its own nftables."""

import os
import subprocess

import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
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
