"""kernel_prereqs on the lab: real sysctls in each host's own network namespace, real BTF, real nf_tables."""

import json
import os
import subprocess
import sys

import pytest
import testinfra.utils.ansible_runner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
testinfra_hosts = RUNNER.get_hosts("kernel_nodes")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures", "kernel")
SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": 1,
    "net.bridge.bridge-nf-call-ip6tables": 1,
}
# Only the host that asks (kernel_prereqs_forwarding) forwards; the other keeps the lab guest's default, off.
FORWARDS = {"kp-ebpf": "1", "kp-nft": "0"}


# The interface of the IPv4 default route, as a shell command substitution (host0 on the lab, eth0 under docker).
DEFAULT_NIC = "$(ip -o -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == \"dev\") print $(i + 1)}')"


def _name(host):
    return host.backend.get_hostname()


def _facts(host):
    result = host.ansible("mseg.fleet.kernel_facts", check=False)
    return result["ansible_facts"]["mseg_kernel"]


def _playbook(limit, extra, *args, playbook=os.path.join(ROOT, "playbooks", "prereqs.yml")):
    """Run a playbook (playbooks/prereqs.yml) on the scenario's hosts; return (rc, json callback result)."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", INVENTORY,
            "-l", limit, "-e", json.dumps(dict(extra, mseg_hosts=limit)), playbook] + list(args)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def check_mode_run():
    """One check-mode run of the converge itself over every host, so with the converge's variables."""
    return _playbook("kernel_nodes", {}, "--check", playbook=os.path.join(os.path.dirname(__file__), "..", "converge.yml"))


def _lines(host, *commands):
    """Run shell commands in one round trip; each command's output comes back as one stripped line."""
    script = " ; ".join("printf '%%s\\n' \"$( (%s) 2>/dev/null | tr '\\n' ' ')\"" % command for command in commands)
    return [line.strip() for line in host.run(script).stdout.split("\n")[:len(commands)]]


def test_sysctls_are_set_live_in_the_hosts_own_namespace(host):
    assert host.check_output("sysctl -n " + " ".join(SYSCTLS)).split() == ["1"] * len(SYSCTLS)
    assert host.check_output("sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding").split() == [
        FORWARDS[_name(host)], "0"]


def test_sysctls_persist_through_the_boot_path(host):
    conf = "/etc/sysctl.d/90-mseg-kernel-prereqs.conf"
    owner_mode, content = _lines(host, "stat -c '%U %a' " + conf, "cat %s" % conf)
    assert owner_mode == "root 644"
    forwarding = ["net.ipv4.ip_forward=1"] if FORWARDS[_name(host)] == "1" else []
    assert content.split() == ["%s=%s" % item for item in SYSCTLS.items()] + forwarding
    # What happens at boot: systemd-sysctl applies sysctl.d. Drift the live value, then let it restore it.
    name = "net.bridge.bridge-nf-call-iptables"
    try:
        restored = host.check_output("sysctl -q -w %s=0 && systemctl restart systemd-sysctl.service"
                                     " && sysctl -n %s net.ipv4.ip_forward" % (name, name))
        assert restored.split() == ["1", FORWARDS[_name(host)]]
    finally:
        host.run("sysctl -q -w %s=1" % name)


def test_br_netfilter_active_listed_for_the_boot_and_no_sriov_rule(host):
    bridge, modules_load, nic, sriov_capable, udev_rule = _lines(
        host, "test -d /proc/sys/net/bridge && echo yes",
        "tail -n 1 /etc/modules-load.d/mseg-kernel-prereqs.conf",
        "echo " + DEFAULT_NIC,
        "test -e /sys/class/net/%s/device/sriov_totalvfs && echo yes" % DEFAULT_NIC,
        "test -e /etc/udev/rules.d/81-mseg-sriov.rules && echo yes")
    assert bridge == "yes"
    assert modules_load == "br_netfilter"
    # The converge asked for VFs on the default-route NIC, a veth (or a container's eth0) without SR-IOV: the
    # request was skipped and no boot rule was written.
    assert nic and sriov_capable == "" and udev_rule == ""


def test_facts_describe_the_running_kernel(host):
    facts = _facts(host)
    release, nft_version, btf, links, route, cpus = _lines(
        host, "uname -r", "nft --version", "test -e /sys/kernel/btf/vmlinux && echo yes", "ip -j link show",
        "ip -j -4 route show default", "getconf _NPROCESSORS_ONLN")
    assert facts["release"] == release
    assert facts["version_supported"] is True
    assert facts["btf"]["available"] is (btf == "yes")
    assert facts["nftables"]["works"] is True, facts["nftables"]
    assert facts["nftables"]["version"] in nft_version
    assert facts["br_netfilter"]["active"] is True
    assert facts["sysctls"]["net.ipv4.ip_forward"] == FORWARDS[_name(host)]
    links = json.loads(links)
    assert sorted(facts["interfaces"]) == sorted(link["ifname"].split("@")[0] for link in links)
    for link in links:
        assert facts["interfaces"][link["ifname"].split("@")[0]]["mtu"] == link["mtu"]
    assert facts["default_route_interfaces"]["ipv4"] == json.loads(route)[0]["dev"]
    assert facts["cpus"]["count"] == int(cpus)
    # A container has its own network namespace: the JIT sysctls of the initial one are not visible.
    assert facts["bpf"]["jit"] == "unknown"
    if _name(host) == "kp-ebpf":
        # This host converged with the eBPF backend: its BTF check was the real one.
        assert RUNNER.get_variables("kp-ebpf")["kernel_prereqs_backend"] == "ebpf"
        assert facts["btf"]["available"] is True


def test_check_mode_after_converge_changes_nothing(host, check_mode_run):
    rc, result = check_mode_run
    assert rc == 0
    assert result["stats"][_name(host)]["changed"] == 0


def test_br_netfilter_that_cannot_be_loaded_in_a_container(host):
    """br_netfilter inactive but loadable by the fixture's account: the real modprobe in the container fails (no
    CAP_SYS_MODULE, no modules of the machine's kernel) and the role says where to load it."""
    if _name(host) != "kp-nft":
        pytest.skip("one container proves it")
    fixture = "/tmp/mseg-kernel-fixture"
    host.run_expect([0], "rm -rf %s" % fixture)
    source = os.path.join(FIXTURES, "bridge_module")
    copied = host.ansible("ansible.builtin.copy", "src=%s/ dest=%s/" % (source, fixture), check=False)
    assert not copied.get("failed"), copied
    try:
        rc, result = _playbook(_name(host), {
            "kernel_prereqs_proc_root": fixture + "/proc",
            "kernel_prereqs_sys_root": fixture + "/sys",
            "kernel_prereqs_modules_root": fixture + "/modules",
            "kernel_prereqs_install_packages": False,
            "kernel_prereqs_modules_load_file": fixture + "/modules-load.conf",
            "kernel_prereqs_sysctl_file": fixture + "/sysctl.conf",
        })
    finally:
        listing = host.run("ls %s" % fixture).stdout.split()
        host.run("rm -rf %s" % fixture)
    assert rc == 2
    messages = [outcome["msg"] for play in result["plays"] for task in play["tasks"]
                for outcome in [task["hosts"].get(_name(host), {})] if outcome.get("failed")]
    assert len(messages) == 1, messages
    prefix = ("br_netfilter is not active on {0} ({1}/proc/sys/net/bridge is missing) and could not be loaded: "
              "modprobe br_netfilter failed (".format(_name(host), fixture))
    suffix = ("). Load br_netfilter where the kernel runs (modprobe br_netfilter, or on the machine that hosts this "
              "container); without it bridged traffic bypasses the firewall.")
    assert messages[0].startswith(prefix) and messages[0].endswith(suffix), messages[0]
    assert "modprobe:" in messages[0][len(prefix):-len(suffix)], "the reason is modprobe's own error"
    assert result["stats"][_name(host)]["changed"] == 0
    assert "modules-load.conf" not in listing and "sysctl.conf" not in listing
