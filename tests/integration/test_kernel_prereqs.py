"""The kernel_prereqs role, run for real with ansible-playbook against localhost.

Every failure path: the role is pointed at the fixture trees in tests/unit/fixtures/kernel/ through its own
variables (kernel_prereqs_proc_root, _sys_root, _modules_root, _nft_path). All cases run in one ansible-playbook
run, one inventory host (connection local) per case, so each case is one host's outcome. Each must fail in its check,
before the role changes anything, with its exact message; the files the role would write are redirected into a
directory per case as a second guard, and the tests check that nothing reported a change.

Happy paths run inside a throwaway network namespace, so the role sets real sysctls of the running kernel without
touching the test machine's own: converge, idempotence and check mode, and SR-IOV against a copy of a fixture sysfs.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402  (the shared namespace helpers live next to this file)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures", "kernel")
PLAYBOOK = os.path.join(ROOT, "playbooks", "prereqs.yml")


def play(tmp_path, role_vars, check=False, prefix=()):
    """Run playbooks/prereqs.yml on localhost; return (rc, the json callback's result)."""
    extra = {
        "mseg_hosts": "localhost",
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
        "kernel_prereqs_install_packages": False,
        "kernel_prereqs_sysctl_file": str(tmp_path / "sysctl.conf"),
        "kernel_prereqs_modules_load_file": str(tmp_path / "modules-load.conf"),
        "kernel_prereqs_sriov_udev_rules_file": str(tmp_path / "sriov.rules"),
    }
    extra.update(role_vars)
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
            "-e", "@" + str(vars_file), PLAYBOOK] + (["--check"] if check else [])
    proc = subprocess.run(list(prefix) + argv, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible-playbook printed no JSON\n" + proc.stdout[-4000:] + proc.stderr[-4000:])


def task_results(result):
    """``{task name: [result, ...]}`` (one result per loop item) for localhost."""
    tasks = {}
    for one in result["plays"]:
        for task in one["tasks"]:
            outcome = task["hosts"].get("localhost", {})
            name = task["task"]["name"].split(" : ", 1)[-1]
            tasks.setdefault(name, []).extend(outcome.get("results") or [outcome])
    return tasks


def _tree_without(tmp, tree, *parts):
    """A copy of fixture ``tree`` with one path removed."""
    copy = os.path.join(tmp, tree + "-without-" + parts[-1])
    shutil.copytree(os.path.join(FIXTURES, tree), copy)
    target = os.path.join(copy, *parts)
    if os.path.isdir(target):
        shutil.rmtree(target)
    else:
        os.remove(target)
    return copy


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    """Run every failure case at once; return {case: {"failed": [(task, msg)], "changed": n, "written": [...]}}."""
    tmp = str(tmp_path_factory.mktemp("kernel-failures"))
    empty = os.path.join(tmp, "empty")
    os.mkdir(empty)
    cases = {
        "old-kernel": ("old_kernel", {}),
        "no-release": (empty, {}),
        "no-nft": ("modern", {"kernel_prereqs_nft_path": os.path.join(tmp, "no-such-nft")}),
        "no-btf": ("no_btf", {"kernel_prereqs_backend": "ebpf"}),
        "no-btf-no-bpf": (_tree_without(tmp, "no_btf", "proc", "sys", "kernel", "unprivileged_bpf_disabled"),
                          {"kernel_prereqs_backend": "ebpf"}),
        "btf-not-needed": ("no_btf", {"kernel_prereqs_underlay_interfaces": ["eth0"],
                                      "kernel_prereqs_overlay_mtu": 1500}),
        "no-bridge": ("no_bridge", {}),
        "bridge-hidden": (_tree_without(tmp, "modern", "proc", "sys", "net", "bridge"), {}),
        "bridge-modprobe": ("bridge_module", {}),
        "underlay-missing": ("modern", {"kernel_prereqs_underlay_interfaces": ["eth0", "bond0"]}),
        "small-mtu": ("small_mtu", {}),
        "ipv6-mtu": ("modern", {"kernel_prereqs_underlay_interfaces": ["eth1"],
                                "kernel_prereqs_underlay_ip_version": 6}),
        "too-many-vfs": ("sriov_small", {"kernel_prereqs_sriov_numvfs": {"eth0": 8, "eth9": 2}}),
        "negative-vfs": ("sriov_small", {"kernel_prereqs_sriov_numvfs": {"eth0": -1}}),
    }
    hosts = {}
    for case, (tree, role_vars) in cases.items():
        base = os.path.join(FIXTURES, tree)
        out = os.path.join(tmp, "out", case)
        os.makedirs(out)
        hosts[case] = dict({
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "kernel_prereqs_proc_root": os.path.join(base, "proc"),
            "kernel_prereqs_sys_root": os.path.join(base, "sys"),
            "kernel_prereqs_modules_root": os.path.join(base, "modules"),
            "kernel_prereqs_install_packages": False,
            "kernel_prereqs_sysctl_file": os.path.join(out, "sysctl.conf"),
            "kernel_prereqs_modules_load_file": os.path.join(out, "modules-load.conf"),
            "kernel_prereqs_sriov_udev_rules_file": os.path.join(out, "sriov.rules"),
        }, **role_vars)
    inventory = os.path.join(tmp, "inventory.json")
    with open(inventory, "w") as handle:
        json.dump({"all": {"hosts": hosts}}, handle)
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"), ANSIBLE_FORKS="4")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory,
         "-e", "mseg_hosts=all ansible_become=false", PLAYBOOK],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    outcomes = dict((case, {"failed": [], "changed": result["stats"][case]["changed"],
                            "written": os.listdir(os.path.join(tmp, "out", case))}) for case in cases)
    for one in result["plays"]:
        for task in one["tasks"]:
            name = task["task"]["name"].split(" : ", 1)[-1]
            for case, outcome in task["hosts"].items():
                for item in outcome.get("results") or [outcome]:
                    if item.get("failed"):
                        outcomes[case]["failed"].append((name, item["msg"]))
    outcomes["tmp"] = tmp
    return outcomes


def failure(failures, case, max_changed=0):
    """The one (task, message) case failed with, after checking that it changed and wrote nothing."""
    outcome = failures[case]
    assert outcome["changed"] <= max_changed, "%s: the role changed something before failing" % case
    assert outcome["written"] == [], "%s: %s written before the checks passed" % (case, outcome["written"])
    assert len(outcome["failed"]) == 1, outcome["failed"]
    return outcome["failed"][0]


def test_old_kernel(failures):
    task, msg = failure(failures, "old-kernel")
    assert task == "Check the kernel version"
    assert msg == (
        "Kernel 3.10.0-1160.el7.x86_64 on old-kernel is older than 4.18, the oldest kernel mseg.fleet can enforce "
        "on. Boot a kernel 4.18 or newer (for example Debian 10, RHEL 8, Ubuntu 20.04 or later); "
        "nothing was changed on the host."
    )


def test_unreadable_kernel_release(failures):
    task, msg = failure(failures, "no-release")
    assert task == "Check the kernel version"
    assert msg == (
        "The kernel release of no-release could not be read from {0}/empty/proc/sys/kernel/osrelease, so it cannot "
        "be shown to be 4.18 or newer. Boot a kernel 4.18 or newer (for example Debian 10, RHEL 8, Ubuntu 20.04 or "
        "later); nothing was changed on the host.".format(failures["tmp"])
    )


def test_nftables_missing(failures):
    task, msg = failure(failures, "no-nft")
    assert task == "Check that nftables works"
    assert msg == (
        "nftables does not work on no-nft: the nft command is not installed. Install the nftables package (the "
        "role does when kernel_prereqs_install_packages is true), boot a kernel with nf_tables and its inet family "
        "(CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET) and run the role as root (become: true), since the check needs "
        "CAP_NET_ADMIN; nothing was changed on the host."
    )


def test_ebpf_backend_without_btf(failures):
    task, msg = failure(failures, "no-btf")
    assert task == "Check that the kernel can load the eBPF backend"
    assert msg == (
        "kernel_prereqs_backend is ebpf, but kernel 5.4.0-150-generic on no-btf lacks BTF "
        "({0}/no_btf/sys/kernel/btf/vmlinux): the agent could not load its eBPF programs and the host would be "
        "left unfiltered. Use kernel_prereqs_backend nftables, which needs neither, or boot a kernel built with "
        "CONFIG_DEBUG_INFO_BTF=y and CONFIG_BPF_SYSCALL=y; nothing was changed on the host.".format(FIXTURES)
    )


def test_ebpf_backend_without_btf_or_bpf_syscall(failures):
    task, msg = failure(failures, "no-btf-no-bpf")
    assert task == "Check that the kernel can load the eBPF backend"
    assert msg.startswith(
        "kernel_prereqs_backend is ebpf, but kernel 5.4.0-150-generic on no-btf-no-bpf lacks BTF "
        "({0}/no_btf-without-unprivileged_bpf_disabled/sys/kernel/btf/vmlinux) and the bpf() syscall: the agent "
        "could not load its eBPF programs".format(failures["tmp"]))


def test_nftables_backend_needs_no_btf(failures):
    """The same kernel passes the BTF check with the nftables backend and fails later, on MTU."""
    task, msg = failure(failures, "btf-not-needed")
    assert task == "Check the MTU headroom of the underlay interfaces"


def test_br_netfilter_missing(failures):
    task, msg = failure(failures, "no-bridge")
    assert task == "Check that br_netfilter is active or can be loaded"
    assert msg == (
        "br_netfilter is not active on no-bridge ({0}/no_bridge/proc/sys/net/bridge is missing) and cannot be "
        "loaded: kernel 6.1.0-28-amd64 has no br_netfilter module under {0}/no_bridge/modules/6.1.0-28-amd64. "
        "Install the modules of that kernel, or load br_netfilter where the kernel runs (modprobe br_netfilter on the "
        "machine that hosts this container). Without it bridged traffic bypasses the firewall; nothing was changed on "
        "the host.".format(FIXTURES)
    )


def test_br_netfilter_loaded_but_not_in_this_namespace(failures):
    """A container on a kernel before 5.3: the module is loaded, its sysctls live in the initial namespace only."""
    task, msg = failure(failures, "bridge-hidden")
    assert task == "Check that br_netfilter is active or can be loaded"
    assert msg == (
        "br_netfilter is not active on bridge-hidden ({0}/modern-without-bridge/proc/sys/net/bridge is missing) and "
        "cannot be loaded: the kernel has it (loaded), but its sysctls do not show in this network namespace (before "
        "Linux 5.3 they exist only in the initial one). Run the role on the machine that hosts this container, or "
        "boot a kernel 5.3 or newer there. Without it bridged traffic bypasses the firewall; nothing was changed on "
        "the host.".format(failures["tmp"])
    )


def test_br_netfilter_that_does_not_load(failures):
    """The fixture says br_netfilter is loadable but inactive: the role runs the real modprobe, gathers again and
    fails because the fixture's bridge sysctls cannot appear. On a kernel without module support (or in a
    container) modprobe itself fails; where br_netfilter exists modprobe loads it (the only case where this test
    touches the test machine: loading a module the fleet needs anyway)."""
    task, msg = failure(failures, "bridge-modprobe", max_changed=1)
    assert task == "Check that br_netfilter is active now"
    prefix = ("br_netfilter is not active on bridge-modprobe ({0}/bridge_module/proc/sys/net/bridge is missing) and "
              "could not be loaded: ".format(FIXTURES))
    suffix = (" Load br_netfilter where the kernel runs (modprobe br_netfilter, or on the machine that hosts this "
              "container); without it bridged traffic bypasses the firewall.")
    assert msg.startswith(prefix) and msg.endswith(suffix), msg
    reason = msg[len(prefix):-len(suffix)]
    assert reason == "modprobe br_netfilter succeeded, but the bridge sysctls did not appear." or (
        reason.startswith("modprobe br_netfilter failed (") and reason.endswith(").") and len(reason) > 32), reason


def test_underlay_interface_missing(failures):
    task, msg = failure(failures, "underlay-missing")
    assert task == "Check that the underlay interfaces exist"
    assert msg == (
        "kernel_prereqs_underlay_interfaces lists bond0, but underlay-missing has no interface of that name (it has "
        "eth0, eth1, lo). List the interfaces that carry the overlay on this host, or [] to skip the MTU check; "
        "nothing was changed on the host."
    )


def test_mtu_too_small_on_the_default_route_nic(failures):
    task, msg = failure(failures, "small-mtu")
    assert task == "Check the MTU headroom of the underlay interfaces"
    assert msg == (
        "Underlay interface eth0 on small-mtu has MTU 1450, but an overlay MTU of 1450 needs at least 1500 on the "
        "underlay (1450 + 50 bytes of VXLAN over IPv4), or packets are fragmented and lost. Raise the MTU of eth0 "
        "to 1500 or more (jumbo frames, for example 9000, end to end on the underlay), or lower "
        "kernel_prereqs_overlay_mtu to 1400; nothing was changed on the host."
    )


def test_mtu_too_small_for_an_ipv6_underlay(failures):
    task, msg = failure(failures, "ipv6-mtu")
    assert task == "Check the MTU headroom of the underlay interfaces"
    assert msg == (
        "Underlay interface eth1 on ipv6-mtu has MTU 1500, but an overlay MTU of 1450 needs at least 1520 on the "
        "underlay (1450 + 70 bytes of VXLAN over IPv6), or packets are fragmented and lost. Raise the MTU of eth1 "
        "to 1520 or more (jumbo frames, for example 9000, end to end on the underlay), or lower "
        "kernel_prereqs_overlay_mtu to 1430; nothing was changed on the host."
    )


@pytest.mark.parametrize("case, count", [("too-many-vfs", 8), ("negative-vfs", -1)])
def test_too_many_virtual_functions(failures, case, count):
    task, msg = failure(failures, case)
    assert task == "Check the requested SR-IOV virtual function counts"
    assert msg == (
        "kernel_prereqs_sriov_numvfs asks for {0} virtual functions on eth0 of {1}, but eth0 supports 0 to 4 "
        "(sriov_totalvfs). Ask for at most 4; nothing was changed on the host.".format(count, case)
    )


NETNS_OK, NETNS_REASON = netns.available()
needs_netns = pytest.mark.skipif(not NETNS_OK, reason=NETNS_REASON)
SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.bridge.bridge-nf-call-iptables",
           "net.bridge.bridge-nf-call-ip6tables")
SYSCTL_TASK = "Set the bridge sysctls, and forwarding where the host asks for it, live and in sysctl.d"


def read_sysctls(fleet):
    return dict((name, fleet.run("kp", ["cat", "/proc/sys/" + name.replace(".", "/")]).stdout.strip())
                for name in SYSCTLS)


def changed_tasks(result):
    return sorted(name for name, items in task_results(result).items() if any(item.get("changed") for item in items))


@needs_netns
def test_converge_idempotence_and_check_mode_in_a_network_namespace(tmp_path):
    with open("/proc/sys/net/ipv4/ip_forward") as handle:
        machine_forwarding = handle.read()
    with netns.Fleet(["kp"]) as fleet:
        prefix = fleet.exec_prefix("kp")
        # A host whose operator turned IPv4 forwarding on keeps it; IPv6 forwarding, off, stays off.
        fleet.run("kp", ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0",
                         "net.bridge.bridge-nf-call-ip6tables=0", "net.ipv4.ip_forward=1",
                         "net.ipv6.conf.all.forwarding=0"])
        before = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0",
                  "net.bridge.bridge-nf-call-iptables": "0", "net.bridge.bridge-nf-call-ip6tables": "0"}
        assert read_sysctls(fleet) == before
        role_vars = {"kernel_prereqs_underlay_interfaces": ["eth0"]}

        rc, result = play(tmp_path, role_vars, check=True, prefix=prefix)
        assert rc == 0, result["stats"]
        assert changed_tasks(result) == ["Load br_netfilter at boot", SYSCTL_TASK]
        assert read_sysctls(fleet) == before, "check mode changed a sysctl"
        assert not (tmp_path / "sysctl.conf").exists() and not (tmp_path / "modules-load.conf").exists()

        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0, result["stats"]
        assert result["stats"]["localhost"]["changed"] == 2
        assert read_sysctls(fleet) == dict(before, **{"net.bridge.bridge-nf-call-iptables": "1",
                                                      "net.bridge.bridge-nf-call-ip6tables": "1"})
        assert (tmp_path / "sysctl.conf").read_text().splitlines() == [
            "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1"]
        assert (tmp_path / "modules-load.conf").read_text().splitlines()[-1] == "br_netfilter"
        assert not (tmp_path / "sriov.rules").exists()
        mtu = task_results(result)["Check the MTU headroom of the underlay interfaces"]
        assert [(item["item"], item.get("failed", False)) for item in mtu] == [("eth0", False)]

        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0, result["stats"]
        assert result["stats"]["localhost"]["changed"] == 0, changed_tasks(result)

        fleet.run("kp", ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"])
        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert changed_tasks(result) == [SYSCTL_TASK]
        assert read_sysctls(fleet)["net.bridge.bridge-nf-call-iptables"] == "1", "a drifted sysctl was not set again"
        assert read_sysctls(fleet)["net.ipv4.ip_forward"] == "1"
    with open("/proc/sys/net/ipv4/ip_forward") as handle:
        assert handle.read() == machine_forwarding, "the role reached outside its network namespace"


@needs_netns
def test_forwarding_only_where_the_host_asks_and_never_turned_off(tmp_path):
    """Forwarding on by default let forwarded traffic through unfiltered: only a host that asks gets it.

    By default a host keeps what it has (the converge test above: IPv4 on stays on, IPv6 off stays off).
    """
    forwarding = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
    with netns.Fleet(["kp"]) as fleet:
        prefix = fleet.exec_prefix("kp")
        fleet.run("kp", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"])
        role_vars = {"kernel_prereqs_underlay_interfaces": ["eth0"], "kernel_prereqs_forwarding": ["ipv4", "ipv6"]}
        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0, result["stats"]
        assert [read_sysctls(fleet)[name] for name in forwarding] == ["1", "1"]
        lines = (tmp_path / "sysctl.conf").read_text().splitlines()
        assert "net.ipv4.ip_forward=1" in lines and "net.ipv6.conf.all.forwarding=1" in lines

        # Asked no longer (or upgraded from a release that turned IPv4 forwarding on everywhere through this file):
        # not turned off, since something may route through the host; only the next boot no longer turns it on.
        del role_vars["kernel_prereqs_forwarding"]
        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0, result["stats"]
        assert "Take the forwarding sysctls nobody asked for out of this role's sysctl.d file" in changed_tasks(result)
        assert [read_sysctls(fleet)[name] for name in forwarding] == ["1", "1"]
        assert (tmp_path / "sysctl.conf").read_text().splitlines() == [
            "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1"]


@needs_netns
def test_sriov_virtual_functions_now_and_at_boot(tmp_path):
    sys_root = tmp_path / "sys"
    shutil.copytree(os.path.join(FIXTURES, "modern", "sys"), str(sys_root))
    numvfs = sys_root / "class" / "net" / "eth0" / "device" / "sriov_numvfs"
    role_vars = {"kernel_prereqs_sys_root": str(sys_root), "kernel_prereqs_underlay_interfaces": ["eth0"],
                 "kernel_prereqs_sriov_numvfs": {"eth0": 8, "eth1": 2, "ens9": 4}}
    with netns.Fleet(["kp"]) as fleet:
        prefix = fleet.exec_prefix("kp")
        rc, result = play(tmp_path, role_vars, check=True, prefix=prefix)
        assert rc == 0, result["stats"]
        assert "Set the SR-IOV virtual function counts now" in changed_tasks(result)
        assert numvfs.read_text() == "0\n"
        assert not (tmp_path / "sriov.rules").exists()

        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0, result["stats"]
        assert numvfs.read_text() == "8\n"
        rules = [line for line in (tmp_path / "sriov.rules").read_text().splitlines() if not line.startswith("#")]
        assert rules == [
            'ACTION=="add", SUBSYSTEM=="net", ENV{ID_NET_NAME}=="eth0", ATTR{device/sriov_numvfs}="8"',
            'ACTION=="add", SUBSYSTEM=="net", KERNEL=="eth0", ATTR{device/sriov_numvfs}="8"',
        ]
        skipped = [item["msg"] for item in task_results(result)["Report the NICs that get no virtual functions"]]
        assert skipped == ["Skipping SR-IOV on ens9: no such interface on localhost.",
                           "Skipping SR-IOV on eth1: the device does not support SR-IOV on localhost."]

        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0 and result["stats"]["localhost"]["changed"] == 0, changed_tasks(result)

        role_vars["kernel_prereqs_sriov_numvfs"] = {"eth0": 4}
        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0, result["stats"]
        assert numvfs.read_text() == "4\n"
        assert changed_tasks(result) == ["Set the SR-IOV virtual function counts at boot",
                                         "Set the SR-IOV virtual function counts now"]

        role_vars["kernel_prereqs_sriov_numvfs"] = {}
        rc, result = play(tmp_path, role_vars, prefix=prefix)
        assert rc == 0, result["stats"]
        assert not (tmp_path / "sriov.rules").exists(), "the boot rule outlived the setting"


@needs_netns
def test_kernel_facts_module_on_the_running_kernel(tmp_path):
    """The module itself, on this machine's kernel, inside a namespace with a known set of interfaces."""
    with netns.Fleet(["kp"]) as fleet:
        fleet.run("kp", ["ip", "link", "set", "eth0", "mtu", "1400"])
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
                   ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_NOCOLOR="1")
        proc = subprocess.run(
            fleet.exec_prefix("kp") + [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost",
                                       "-c", "local", "-e", "ansible_python_interpreter=" + sys.executable,
                                       "-m", "mseg.fleet.kernel_facts", "-o"],
            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = json.loads(proc.stdout.split(" => ", 1)[1])["ansible_facts"]["mseg_kernel"]
    assert facts["release"] == os.uname().release
    assert facts["version_supported"] is True
    assert facts["btf"]["available"] is os.path.exists("/sys/kernel/btf/vmlinux")
    assert facts["nftables"]["works"] is True, facts["nftables"]
    assert facts["nftables"]["binary"] and facts["nftables"]["version"]
    assert facts["br_netfilter"]["active"] is os.path.isdir("/proc/sys/net/bridge")
    assert facts["sysctls"]["net.ipv4.ip_forward"] == "0", "a fresh namespace does not forward"
    assert sorted(facts["interfaces"]) == ["eth0", "lo"]
    assert facts["interfaces"]["eth0"]["mtu"] == 1400
    assert facts["interfaces"]["eth0"]["virtual"] is True
    assert facts["interfaces"]["eth0"]["sriov"] == {"supported": False, "totalvfs": None, "numvfs": None}
    assert facts["interfaces"]["lo"]["features"]["loopback"] is True
    assert facts["default_route_interfaces"] == {"ipv4": None, "ipv6": None}
    assert facts["cpus"]["count"] == len(facts["cpus"]["online"]) >= 1
    assert set(os.sched_getaffinity(0)) <= set(facts["cpus"]["online"])
