"""The lab engine's naming, addressing and bookkeeping (the booting itself runs in `molecule test -s lab`)."""

import ipaddress
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils._lab import lab
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import FileLock


def test_short_names_are_used_as_they_are():
    assert lab.lab_tag("demo") == "demo"
    assert lab.bridge_name("demo") == "mslb-demo"
    assert lab.machine_name("demo", 3) == "demo03"
    assert lab.host_veth_name("demo", 3) == "vb-demo03"


def test_long_names_are_hashed_and_fit_interface_names():
    names = ["mol-kernel_prereqs", "mol-pki", "mol-lab", "a-very-long-lab-name-of-32-chars"]
    tags = [lab.lab_tag(n) for n in names]
    assert len(set(tags)) == len(tags)
    for name in names:
        assert len(lab.bridge_name(name)) <= 15
        assert len(lab.host_veth_name(name, 99)) <= 15
    assert lab.lab_tag("mol-kernel_prereqs") == lab.lab_tag("mol-kernel_prereqs")


@pytest.mark.parametrize("name", ["", "Demo", "1lab", "lab name", "x" * 33, None])
def test_bad_lab_names_are_refused(name):
    with pytest.raises(lab.LabError, match="lab name"):
        lab.validate_name(name)


def test_host_index_is_bounded():
    with pytest.raises(lab.LabError, match="at most 100 hosts"):
        lab.machine_name("demo", 100)


def test_subnet_is_deterministic_and_never_the_reserved_one():
    for name in ("demo", "mol-lab", "mol-pki", "x"):
        index = lab.default_subnet_index(name)
        assert 1 <= index <= 254
        assert index == lab.default_subnet_index(name)
    v4, v6 = lab.subnets_for_index(5)
    assert str(v4) == "10.213.5.0/24"
    assert str(v6) == "fd6d:7365:6700:5::/64"


def test_a_subnet_in_use_is_skipped():
    first = lab.choose_subnets("mol-lab", [])[0]
    second = lab.choose_subnets("mol-lab", [first])[0]
    assert second != first
    assert second.overlaps(ipaddress.ip_network("10.213.0.0/16"))


def test_no_free_subnet_is_a_clear_error():
    with pytest.raises(lab.LabError, match="no free /24"):
        lab.choose_subnets("mol-lab", [ipaddress.ip_network("10.213.0.0/16")])


def test_plan_assigns_addresses_in_order_and_keeps_fixed_ones():
    v4, v6 = lab.subnets_for_index(7)
    plan = lab.plan_hosts("t", [{"name": "a"}, {"name": "b", "ipv4": "10.213.7.99", "ipv6": "fd6d:7365:6700:7::99"}],
                          v4, v6)
    assert [(h["name"], h["ipv4"], h["ipv6"], h["host_veth"]) for h in plan] == [
        ("a", "10.213.7.10", "fd6d:7365:6700:7::a", "vb-t00"),
        ("b", "10.213.7.99", "fd6d:7365:6700:7::99", "vb-t01"),
    ]


@pytest.mark.parametrize("hosts, message", [
    ([], "host list is empty"),
    ([{"name": "Web_01"}], "host name 'Web_01' is invalid"),
    ([{"name": "a"}, {"name": "a"}], "listed twice"),
    ([{"name": "a", "ipv4": "10.213.8.5"}], "must be a host address in 10.213.7.0/24"),
    ([{"name": "a", "ipv4": "10.213.7.1"}], "other than .1"),
    ([{"name": "a", "ipv4": "10.213.7.300"}], "invalid address"),
    ([{"name": "a", "ipv4": "10.213.7.20"}, {"name": "b", "ipv4": "10.213.7.20"}], "more than one host"),
])
def test_bad_host_lists_are_refused(hosts, message):
    v4, v6 = lab.subnets_for_index(7)
    with pytest.raises(lab.LabError, match=message):
        lab.plan_hosts("t", hosts, v4, v6)


def test_fixed_addresses_imply_the_subnets():
    hosts = [{"name": "a", "ipv4": "10.213.0.21", "ipv6": "fd6d:7365:6700::21"},
             {"name": "b", "ipv4": "10.213.0.22", "ipv6": "fd6d:7365:6700::22"}]
    assert lab.subnets_from_hosts(hosts) == (ipaddress.ip_network("10.213.0.0/24"),
                                             ipaddress.ip_network("fd6d:7365:6700::/64"))
    assert lab.subnets_from_hosts([{"name": "a"}]) is None


def test_fixed_addresses_in_two_subnets_are_refused():
    hosts = [{"name": "a", "ipv4": "10.213.0.21", "ipv6": "fd6d:7365:6700::21"},
             {"name": "b", "ipv4": "10.213.1.22", "ipv6": "fd6d:7365:6700::22"}]
    with pytest.raises(lab.LabError, match="one IPv4 /24"):
        lab.subnets_from_hosts(hosts)


def test_package_key_follows_the_package_set_only():
    key = lab.package_key(["b", "a"], "bookworm", "http://m")
    assert key == lab.package_key(["a", "b", "a"], "bookworm", "http://m")
    assert key != lab.package_key(["a", "b", "c"], "bookworm", "http://m")
    assert key != lab.package_key(["a", "b"], "trixie", "http://m")


def test_default_packages_carry_what_the_roles_need():
    for package in ("systemd", "openssh-server", "python3", "nftables", "iproute2", "nginx-light", "keepalived",
                    "python3-cryptography", "python3-cffi-backend"):
        assert package in lab.DEFAULT_PACKAGES


def test_state_is_written_atomically_and_read_back(tmp_path):
    state = lab.LabState(str(tmp_path / "s"))
    state.host("web-01")["pid"] = 12345
    state.save()
    assert json.loads((tmp_path / "s" / "state.json").read_text())["hosts"]["web-01"]["pid"] == 12345
    assert os.listdir(str(tmp_path / "s")) == ["state.json"]
    assert stat.S_IMODE(os.stat(str(tmp_path / "s" / "state.json")).st_mode) == 0o600
    assert lab.LabState(str(tmp_path / "s")).data["hosts"]["web-01"]["pid"] == 12345


def test_files_of_a_host_root_get_their_directory_and_mode(tmp_path):
    path = str(tmp_path / "etc" / "ssh" / "sshd_config.d" / "mseg-lab.conf")
    lab._write(path, "UseDNS no\n")
    lab._write(str(tmp_path / "etc" / "machine-id"), "0123\n", 0o444)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(str(tmp_path / "etc" / "machine-id")).st_mode) == 0o444
    lab._write(path, "UseDNS yes\n")
    with open(path) as handle:
        assert handle.read() == "UseDNS yes\n"
    assert sorted(os.listdir(os.path.dirname(path))) == ["mseg-lab.conf"]


def _hold_the_build_lock(cache_dir, packages, seconds, built):
    """Another lab building the image: hold its lock for ``seconds``, then finish the image when ``built``."""
    key = lab.package_key(packages, lab.DEFAULT_SUITE, lab.DEFAULT_MIRROR)
    os.makedirs(cache_dir, exist_ok=True)
    lock = FileLock(os.path.join(cache_dir, "rootfs-%s.lock" % key), 1, RuntimeError).acquire()

    def finish():
        time.sleep(seconds)
        if built:
            os.makedirs(os.path.join(cache_dir, "rootfs-" + key, "etc"))
            with open(os.path.join(cache_dir, "rootfs-" + key, "etc", "mseg-lab-image"), "w") as handle:
                handle.write("key=%s\n" % key)
        lock.release()
    thread = threading.Thread(target=finish)
    thread.start()
    return key, thread


def test_a_lab_waits_for_the_image_another_lab_is_building(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "run", lambda *args, **kwargs: pytest.fail("built the image a second time"))
    cache = str(tmp_path / "cache")
    key, thread = _hold_the_build_lock(cache, ["a"], 0.3, built=True)
    assert lab.ensure_rootfs(cache, ["a"], timeout=5) == (os.path.join(cache, "rootfs-" + key), False)
    thread.join()


def test_a_build_that_never_ends_fails_naming_the_lock_and_its_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "BUILD_MARGIN", 0)
    cache = str(tmp_path / "cache")
    key, thread = _hold_the_build_lock(cache, ["a"], 1.0, built=False)
    with pytest.raises(lab.LabError) as err:
        lab.ensure_rootfs(cache, ["a"], timeout=0.2)
    thread.join()
    assert str(err.value) == (
        "the root file system %s/rootfs-%s is still being built by pid %d (lock %s/rootfs-%s.lock) after 0 s; wait "
        "for that lab, or stop it and run again" % (cache, key, os.getpid(), cache, key))


def test_down_without_state_is_a_no_op(tmp_path):
    result = lab.lab_down(str(tmp_path / "nothing"))
    assert result["changed"] is False
    assert not (tmp_path / "nothing").exists()


def test_down_ignores_recorded_pids_that_are_not_lab_hosts(tmp_path):
    # A recycled PID (here: this very test process) is never signalled.
    state = lab.LabState(str(tmp_path / "s"))
    state.data.update({"name": "t", "bridge": "mslb-doesnotexist"})
    state.host("a").update({"pid": os.getpid(), "root": str(tmp_path / "root"), "dir": str(tmp_path / "hostdir")})
    state.save()
    (tmp_path / "hostdir").mkdir()
    result = lab.lab_down(str(tmp_path / "s"))
    assert result == {"changed": True, "removed_hosts": ["a"], "killed": [], "state_dir": str(tmp_path / "s")}
    assert not (tmp_path / "hostdir").exists()
    assert not (tmp_path / "s").exists()


def test_is_lab_process_checks_the_command_line():
    assert lab.is_lab_process(os.getpid(), "/some/root") is False
    assert lab.is_lab_process(2 ** 22 + 1, "/some/root") is False


def test_state_of_another_lab_is_not_taken_over(tmp_path):
    state = lab.LabState(str(tmp_path))
    state.data["name"] = "other"
    state.host("x")["pid"] = 1
    state.save()
    with pytest.raises(lab.LabError, match="belongs to lab 'other'"):
        lab.lab_up("mine", [{"name": "a"}], str(tmp_path), str(tmp_path / "cache"))


def test_inotify_limits_are_raised_never_lowered(tmp_path):
    (tmp_path / "fs" / "inotify").mkdir(parents=True)
    (tmp_path / "fs" / "inotify" / "max_user_instances").write_text("128\n")
    (tmp_path / "fs" / "inotify" / "max_user_watches").write_text("1048576\n")
    assert lab.raise_inotify_limits(str(tmp_path)) == {"fs.inotify.max_user_instances": [128, 8192]}
    assert (tmp_path / "fs" / "inotify" / "max_user_instances").read_text() == "8192\n"
    assert (tmp_path / "fs" / "inotify" / "max_user_watches").read_text() == "1048576\n"
    assert lab.raise_inotify_limits(str(tmp_path)) == {}


def test_a_teardown_waits_for_a_process_until_its_parent_collects_it():
    # 'sh' starts 'true' in the background and becomes 'sleep', which never collects it: a zombie whose
    # parent is not us, as a host's systemd-nspawn is after 'make lab-up' (its parent is PID 1).
    parent = subprocess.Popen(["sh", "-c", "/bin/true & exec sleep 0.3"])
    try:
        deadline = time.time() + 5
        zombie = None
        while zombie is None and time.time() < deadline:
            with open("/proc/%d/task/%d/children" % (parent.pid, parent.pid)) as handle:
                children = [int(pid) for pid in handle.read().split()]
            if children and lab.process_summary(children[0]).startswith("true, exited"):
                zombie = children[0]
            time.sleep(0.01)
        assert zombie, "no zombie to wait for"
        start = lab.process_start(zombie)
        assert lab.process_summary(zombie) == ("true, exited but not yet collected by its parent PID %d (sleep)"
                                               % parent.pid)
        with pytest.raises(lab.LabError, match=r"lab 'x': this is still present 0 s after the teardown: "
                                               r"systemd-nspawn PID %d of host a \(true, exited but not yet "
                                               r"collected by its parent PID %d \(sleep\)\)\. .*make lab-down"
                                               % (zombie, parent.pid)):
            lab._wait_until_gone("x", {"systemd-nspawn PID %d of host a" % zombie: (zombie, start)}, [], None, 0)
        # Once 'sleep' exits, its own parent (us) collects it, and the orphaned zombie is collected: the wait ends.
        started = time.time()
        lab._wait_until_gone("x", {"systemd-nspawn PID %d of host a" % zombie: (zombie, start)}, [], None, 10)
        assert lab.process_start(zombie) != start
        assert time.time() - started < 5
    finally:
        parent.kill()
        parent.wait()


def test_a_teardown_names_a_running_process_and_an_interface_left_behind():
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = time.time()
        with pytest.raises(lab.LabError, match=r"these are still present 0 s after the teardown: systemd-nspawn PID "
                                               r"%d of host a \(sleep, running\); interface lo\." % child.pid):
            lab._wait_until_gone("x", {"systemd-nspawn PID %d of host a" % child.pid:
                                       (child.pid, lab.process_start(child.pid))}, ["lo", "mslb-gone"], None, 0)
        assert time.time() - started < 1
        # A recycled PID (another start time) is not the process that was waited for.
        lab._wait_until_gone("x", {"systemd-nspawn PID %d of host a" % child.pid:
                                   (child.pid, lab.process_start(child.pid) - 1)}, [], None, 0)
    finally:
        child.kill()
        child.wait()


def test_process_start_reads_past_a_command_name_with_spaces_and_parentheses():
    code = ("import ctypes, sys, time\n"
            "ctypes.CDLL(None).prctl(15, b'a) 9 (b', 0, 0, 0)\n"  # PR_SET_NAME
            "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        with open("/proc/%d/stat" % child.pid) as handle:
            fields = handle.read().split()
        assert fields[:4] == [str(child.pid), "(a)", "9", "(b)"]
        # Field 22 is the start time; the name's two spaces shift it by two words.
        assert lab.process_start(child.pid) == int(fields[21 + 2])
        assert lab.process_summary(child.pid) == "a) 9 (b, running"
    finally:
        child.kill()
        child.wait()
    assert lab.process_start(child.pid) is None
