"""Unit tests of the kernel facts engine against the fixture trees in tests/unit/fixtures/kernel/."""

import os
import shutil
import socket

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.host import kernel

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "kernel")


class FakeRunner:
    """Records the commands and answers like nft and bpftool would."""

    def __init__(self, answers=None):
        self.calls = []
        self.answers = answers or {}

    def __call__(self, argv, stdin):
        self.calls.append((argv, stdin))
        key = " ".join(argv[1:])
        return self.answers.get(key, (0, "", ""))


NFT_OK = {"--version": (0, "nftables v1.0.6 (Lester Gooch #5)\n", "")}


def gather(tree, runner=None, nft="/usr/sbin/nft", bpftool=None, features=lambda name: None):
    root = os.path.join(FIXTURES, tree)
    return kernel.gather(
        runner or FakeRunner(NFT_OK), nft, bpftool,
        proc_root=os.path.join(root, "proc"), sys_root=os.path.join(root, "sys"),
        modules_root=os.path.join(root, "modules"), features_reader=features,
    )


@pytest.mark.parametrize("release, expected", [
    ("6.1.0-28-amd64", (6, 1, 0)),
    ("4.18.0-513.el8.x86_64", (4, 18, 0)),
    ("5.15", (5, 15, 0)),
    ("3.10.0-1160.el7.x86_64", (3, 10, 0)),
    ("weird", None),
    (None, None),
])
def test_parse_version(release, expected):
    assert kernel.parse_version(release) == expected


@pytest.mark.parametrize("text, expected", [
    ("0-3,6", [0, 1, 2, 3, 6]),
    ("0", [0]),
    ("8-9,0-1", [0, 1, 8, 9]),
    ("", []),
    (None, []),
    ("0-1,x,3", [0, 1, 3]),
])
def test_parse_cpu_list(text, expected):
    assert kernel.parse_cpu_list(text) == expected


def test_modern_host_facts():
    facts = gather("modern")
    assert facts["release"] == "6.1.0-28-amd64"
    assert facts["version"] == "6.1.0"
    assert facts["version_supported"] is True
    assert facts["btf"]["available"] is True
    assert facts["btf"]["path"].endswith("modern/sys/kernel/btf/vmlinux")
    assert facts["nftables"] == {"binary": "/usr/sbin/nft", "version": "1.0.6", "works": True, "error": None}
    assert facts["bpf"] == {
        "syscall": True, "unprivileged_disabled": 2, "jit": "enabled", "jit_enable": 1, "jit_harden": 0,
        "bpftool": {"binary": None, "version": None},
    }
    assert facts["br_netfilter"] == {"active": True, "module": "loaded"}
    assert facts["sysctls"] == {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "0",
        "net.bridge.bridge-nf-call-iptables": "0",
        "net.bridge.bridge-nf-call-ip6tables": "0",
        "net.bridge.bridge-nf-call-arptables": "0",
    }
    assert facts["default_route_interfaces"] == {"ipv4": "eth0", "ipv6": "eth1"}
    assert facts["cpus"] == {"online": [0, 1, 2, 3, 6], "count": 5}
    assert sorted(facts["interfaces"]) == ["eth0", "eth1", "lo"]
    assert facts["interfaces"]["eth0"] == {
        "mtu": 9000, "driver": None, "virtual": False, "operstate": "up",
        "sriov": {"supported": True, "totalvfs": 63, "numvfs": 0}, "features": None,
    }
    assert facts["interfaces"]["eth1"]["sriov"] == {"supported": False, "totalvfs": None, "numvfs": None}
    assert facts["interfaces"]["lo"]["virtual"] is True
    assert facts["interfaces"]["lo"]["mtu"] == 65536


def test_nft_probe_is_a_check_only_inet_transaction():
    runner = FakeRunner(NFT_OK)
    gather("modern", runner)
    argv, stdin = runner.calls[-1]
    assert argv == ["/usr/sbin/nft", "--check", "-f", "-"]
    assert stdin == "add table inet mseg_probe\n"


def test_old_kernel_is_reported_not_failed():
    facts = gather("old_kernel")
    assert facts["version"] == "3.10.0"
    assert facts["version_supported"] is False
    assert facts["btf"]["available"] is False
    assert facts["bpf"]["jit"] == "unavailable"
    assert facts["bpf"]["jit_enable"] is None


def test_jit_not_visible_outside_the_initial_network_namespace(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "modern", "proc"), str(tmp_path / "proc"))
    shutil.rmtree(str(tmp_path / "proc" / "sys" / "net" / "core"))
    bpf = kernel.bpf_state(str(tmp_path / "proc"))
    assert bpf["jit"] == "unknown"
    assert bpf["syscall"] is True


def test_missing_btf_is_reported():
    facts = gather("no_btf")
    assert facts["version_supported"] is True
    assert facts["btf"]["available"] is False


def test_kernel_4_18_is_the_oldest_supported(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "no_btf"), str(tmp_path / "t"))
    release = tmp_path / "t" / "proc" / "sys" / "kernel" / "osrelease"
    for text, supported in (("4.17.19", False), ("4.18.0-80.el8.x86_64", True), ("5.0.0", True)):
        release.write_text(text + "\n")
        facts = kernel.gather(FakeRunner(NFT_OK), "/usr/sbin/nft", None, proc_root=str(tmp_path / "t" / "proc"),
                              sys_root=str(tmp_path / "t" / "sys"), features_reader=lambda name: None)
        assert facts["version_supported"] is supported, text


def test_nft_missing_is_reported():
    runner = FakeRunner()
    facts = gather("modern", runner, nft=None)
    assert facts["nftables"] == {"binary": None, "version": None, "works": False,
                                 "error": "the nft command is not installed"}
    assert runner.calls == []


def test_nf_tables_rejecting_the_probe_is_reported():
    runner = FakeRunner(dict(NFT_OK, **{
        "--check -f -": (1, "", "Error: Could not process rule: Operation not permitted\nadd table inet x\n"),
    }))
    facts = gather("modern", runner)
    assert facts["nftables"]["works"] is False
    assert facts["nftables"]["version"] == "1.0.6"
    assert facts["nftables"]["error"] == "nft --check failed (rc=1): Error: Could not process rule: Operation not permitted"


def test_bpftool_version_where_installed():
    runner = FakeRunner(dict(NFT_OK, **{"version": (0, "bpftool v7.1.0\nusing libbpf v1.1\n", "")}))
    facts = gather("modern", runner, bpftool="/usr/sbin/bpftool")
    assert facts["bpf"]["bpftool"] == {"binary": "/usr/sbin/bpftool", "version": "7.1.0"}


@pytest.mark.parametrize("tree, state", [
    ("modern", {"active": True, "module": "loaded"}),
    ("no_btf", {"active": True, "module": "builtin"}),
    ("no_bridge", {"active": False, "module": "missing"}),
    ("bridge_module", {"active": False, "module": "available"}),
])
def test_br_netfilter_state(tree, state):
    assert gather(tree)["br_netfilter"] == state


def test_br_netfilter_builtin_from_modules_builtin(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "no_bridge"), str(tmp_path / "t"))
    (tmp_path / "t" / "modules" / "6.1.0-28-amd64" / "modules.builtin").write_text(
        "kernel/net/bridge/br_netfilter.ko\n")
    state = kernel.br_netfilter_state(str(tmp_path / "t" / "proc"), str(tmp_path / "t" / "modules"), "6.1.0-28-amd64")
    assert state == {"active": False, "module": "builtin"}


def test_driver_comes_from_the_device_link(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "modern"), str(tmp_path / "t"))
    os.symlink("../../../../bus/pci/drivers/ixgbe", str(tmp_path / "t" / "sys" / "class" / "net" / "eth0" / "device" / "driver"))
    nics = kernel.interfaces(str(tmp_path / "t" / "sys"), features_reader=lambda name: None)
    assert nics["eth0"]["driver"] == "ixgbe"
    assert nics["eth1"]["driver"] is None


def test_unreadable_sources_give_empty_facts(tmp_path):
    facts = kernel.gather(FakeRunner(), None, None, proc_root=str(tmp_path / "p"), sys_root=str(tmp_path / "s"),
                          modules_root=str(tmp_path / "m"), features_reader=lambda name: None)
    assert facts["release"] is None
    assert facts["version"] is None
    assert facts["version_supported"] is False
    assert facts["interfaces"] == {}
    assert facts["cpus"] == {"online": [], "count": 0}
    assert facts["default_route_interfaces"] == {"ipv4": None, "ipv6": None}
    assert facts["br_netfilter"] == {"active": False, "module": "missing"}
    assert facts["bpf"]["syscall"] is False
    assert set(facts["sysctls"].values()) == {None}


def test_features_of_the_loopback_interface_from_the_running_kernel():
    features = kernel.interface_features("lo")
    assert features is not None, "the ethtool ioctl answers for lo in every network namespace"
    assert features["loopback"] is True
    assert features["rx-vlan-filter"] is False


def test_features_of_a_missing_interface_are_none():
    name = "mseg-none0"
    with pytest.raises(OSError):
        socket.if_nametoindex(name)
    assert kernel.interface_features(name) is None


def test_malformed_routing_tables_give_no_default_route(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text("Iface\tDestination\nbroken line\neth0\t00000000\t0\tzz\t0\t0\t0\t00000000\n")
    default_with_bad_flags = ["0" * 32, "00", "0" * 32, "00", "0" * 32, "00000400", "1", "0", "zz", "eth0"]
    (tmp_path / "net" / "ipv6_route").write_text("garbage\n" + " ".join(default_with_bad_flags) + "\n")
    assert kernel.default_route_interfaces(str(tmp_path)) == {"ipv4": None, "ipv6": None}
