"""The lab itself on this machine: real systemd-nspawn hosts, then a teardown that leaves nothing behind.

Every test uses its own lab name (so its own bridge, subnet and cgroups) and never touches another lab.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils._lab import lab  # noqa: E402

CACHE = os.environ.get("MSEG_LAB_CACHE", "/var/cache/mseg-lab")
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]


def _usable():
    if os.geteuid() != 0:
        return False, "the lab needs root"
    for tool in ("systemd-nspawn", "debootstrap", "ssh"):
        if not subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True, check=False).stdout:
            return False, "%s is not installed (make setup)" % tool
    return True, ""


OK, WHY = _usable()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


def ssh(result, host, command):
    address = [h["ipv4"] for h in result["hosts"] if h["name"] == host][0]
    return subprocess.run(["ssh", "-i", result["private_key"]] + SSH_OPTS + ["root@" + address, command],
                          capture_output=True, text=True, timeout=60, check=False)


def _lab_cgroup_pids(name=None):
    """PIDs in the host cgroups of lab ``name`` (of every lab when None)."""
    prefix = "mseg-lab-" + (lab.lab_tag(name) if name else "")
    pids = set()
    for root in lab.cgroup_roots():
        for entry in os.listdir(root):
            if entry.startswith(prefix) and entry[len(prefix):][-2:].isdigit():
                pids |= lab.cgroup_pids(os.path.join(root, entry))
    return pids


def net_namespaces(own=None):
    """Network namespaces held on this machine: {'net:[inode]': what holds it}.

    Every process's /proc/PID/ns/net counts, and every nsfs mount (how 'ip netns add' keeps one). Processes in
    the host cgroups of labs other than ``own`` are left out: other labs' guests start and stop services with
    a private network at any time, and the kernel gives a freed namespace's number to the next one at once.
    """
    others = _lab_cgroup_pids() - (_lab_cgroup_pids(own) if own else set())
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in others:
            try:
                found.setdefault(os.readlink("/proc/%s/ns/net" % entry), "process %s" % entry)
            except OSError:
                continue
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            parts = line.split()
            if parts[parts.index("-") + 1] == "nsfs" and parts[3].startswith("net:"):
                found.setdefault(parts[3], "mount " + parts[4])
    return found


def leftovers(name, state_dir, namespaces=()):
    """Everything of lab ``name`` still present on this machine; ``namespaces`` are its hosts' network namespaces."""
    tag = lab.lab_tag(name)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmd = lab.pid_cmdline(int(entry)) or []
            if cmd and os.path.basename(cmd[0]) == "systemd-nspawn" and any(state_dir in part for part in cmd):
                found.append("process %s" % entry)
    for ifname in os.listdir("/sys/class/net"):
        if ifname in (lab.bridge_name(name),) or ifname.startswith("vb-" + tag):
            found.append("interface " + ifname)
    with open("/proc/self/mountinfo") as handle:
        found += ["mount " + line.split()[4] for line in handle if state_dir in line.split()[4]]
    for root in lab.cgroup_roots():
        found += ["cgroup " + os.path.join(root, d) for d in os.listdir(root) if d.startswith("mseg-lab-" + tag)]
    held = net_namespaces(own=name)
    found += ["namespace %s (%s)" % (ns, held[ns]) for ns in sorted(namespaces) if ns in held]
    if os.path.exists(state_dir):
        found.append("state " + state_dir)
    return found


def host_namespaces(name, before):
    """The network namespaces the hosts of lab ``name`` run in (not in ``before``, the machine without the lab)."""
    return set(net_namespaces(own=name)) - set(before)


@pytest.fixture
def scratch(tmp_path):
    """Give a test a lab (name, state directory); whatever the test leaves is removed afterwards."""
    made = []

    def make(name):
        made.append(str(tmp_path / name))
        return name, made[-1]

    yield make
    for state_dir in made:
        lab.lab_down(state_dir)


def test_hosts_boot_answer_ssh_and_teardown_leaves_nothing(scratch):
    name, state_dir = scratch("itboot")
    lab.ensure_rootfs(CACHE, lab.DEFAULT_PACKAGES)  # the acceptance times the boot with the root file system cached
    started = time.time()
    up = lab.lab_up(name, [{"name": "a"}, {"name": "b"}], state_dir, CACHE)
    assert up["changed"] is True
    assert time.time() - started < 60
    for host in ("a", "b"):
        proc = ssh(up, host, "systemctl is-system-running --wait; hostname; ip -br addr show host0")
        assert proc.returncode == 0, proc.stderr
        state, hostname, link = proc.stdout.strip().splitlines()
        assert state == "running"
        assert hostname == host
        mine = [h for h in up["hosts"] if h["name"] == host][0]
        assert mine["ipv4"] + "/24" in link and mine["ipv6"] + "/64" in link
    # b over IPv6 from a, through the bridge, with a real TCP connection to its sshd.
    b6 = [h["ipv6"] for h in up["hosts"] if h["name"] == "b"][0]
    proc = ssh(up, "a", "python3 -c \"import socket; print(socket.create_connection(('%s', 22), 3).recv(8))\"" % b6)
    assert "SSH-2.0" in proc.stdout, proc.stderr

    again = lab.lab_up(name, [{"name": "a"}, {"name": "b"}], state_dir, CACHE)
    assert again["changed"] is False
    assert again["hosts"] == up["hosts"]

    assert leftovers(name, state_dir) != []
    down = lab.lab_down(state_dir)
    assert down["removed_hosts"] == ["a", "b"] and down["killed"] == []
    assert leftovers(name, state_dir) == []
    assert lab.lab_down(state_dir)["changed"] is False


def test_up_and_down_twice_leaves_no_process_namespace_bridge_veth_or_mount(scratch, tmp_path):
    """make lab-up && make lab-down twice in a row, with a one-host lab."""
    name, state_dir = scratch("ittwice")
    before = net_namespaces()
    pin = tmp_path / "pinned-netns"
    for cycle in (1, 2):
        lab.lab_up(name, [{"name": "a"}], state_dir, CACHE)
        mine = host_namespaces(name, before)
        assert mine, "cycle %d: the host runs in a network namespace of its own" % cycle
        up = leftovers(name, state_dir, mine)
        assert [f for f in up if f.startswith("namespace ")] and [f for f in up if f.startswith("process ")], up
        if cycle == 1:
            # A namespace kept open after its processes end (what 'ip netns add' does) is found as a leftover.
            guest = lab.root_users(lab.LabState(state_dir).data["hosts"]["a"]["root"])[0]
            pinned = os.readlink("/proc/%d/ns/net" % guest)
            pin.touch()
            subprocess.run(["mount", "--bind", "/proc/%d/ns/net" % guest, str(pin)], check=True)
            try:
                lab.lab_down(state_dir)
                assert leftovers(name, state_dir, mine) == ["namespace %s (mount %s)" % (pinned, pin)]
            finally:
                subprocess.run(["umount", str(pin)], check=True)
        else:
            down = lab.lab_down(state_dir)
            assert down["removed_hosts"] == ["a"] and down["killed"] == []
        assert leftovers(name, state_dir, mine) == [], cycle
        new = dict((ns, holder) for ns, holder in net_namespaces().items() if ns not in before)
        assert new == {}, "cycle %d left network namespaces behind" % cycle


def test_teardown_with_a_damaged_state_file(scratch):
    name, state_dir = scratch("itbad")
    state_file = os.path.join(state_dir, "state.json")
    before = net_namespaces()

    # The host runs: its systemd-nspawn names the root, the machine (veth, cgroups) and the bridge.
    lab.lab_up(name, [{"name": "a"}], state_dir, CACHE)
    mine = host_namespaces(name, before)
    with open(state_file, "w") as handle:
        handle.write('{"name": "itbad", "hosts": {"a": {"pid": ')  # cut short
    with pytest.raises(lab.LabError, match=r"state file .*/state.json is not valid JSON .*nothing was started"):
        lab.lab_up(name, [{"name": "a"}], state_dir, CACHE)
    assert any(f.startswith("process ") for f in leftovers(name, state_dir)), "a refused lab up changes nothing"
    with open(state_file) as handle:
        assert handle.read().endswith('"pid": '), "a refused lab up keeps the damaged file"
    down = lab.lab_down(state_dir)
    assert down["removed_hosts"] == ["a"] and down["killed"] == []
    assert leftovers(name, state_dir, mine) == []

    # Its systemd-nspawn was killed: the guest's processes are tied to the state directory by their root, the
    # bridge by the lab's name.
    lab.lab_up(name, [{"name": "a"}], state_dir, CACHE)
    mine = host_namespaces(name, before)
    rec = lab.LabState(state_dir).data["hosts"]["a"]
    os.kill(rec["pid"], signal.SIGKILL)
    deadline = time.time() + 10
    while lab.is_lab_process(rec["pid"], rec["root"]) and time.time() < deadline:
        time.sleep(0.1)
    assert lab.root_users(rec["root"]), "the guest outlives its systemd-nspawn"
    with open(state_file, "w") as handle:
        handle.write("[]\n")
    lab.lab_down(state_dir, name=name)
    assert leftovers(name, state_dir, mine) == []


def test_a_host_whose_process_died_is_rebooted(scratch):
    name, state_dir = scratch("itdied")
    up = lab.lab_up(name, [{"name": "a"}], state_dir, CACHE)
    pid = lab.LabState(state_dir).data["hosts"]["a"]["pid"]
    # A hard kill leaves the guest's own processes running in its cgroup; the lab must clear them.
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while lab.is_lab_process(pid, lab.LabState(state_dir).data["hosts"]["a"]["root"]) and time.time() < deadline:
        time.sleep(0.1)
    again = lab.lab_up(name, [{"name": "a"}], state_dir, CACHE)
    assert again["changed"] is True
    assert lab.LabState(state_dir).data["hosts"]["a"]["pid"] != pid
    assert ssh(up, "a", "true").returncode == 0
    lab.lab_down(state_dir)
    assert leftovers(name, state_dir) == []


def test_teardown_after_a_crash_during_boot(scratch):
    name, state_dir = scratch("itcrash")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.mseg.fleet.plugins.module_utils._lab import lab\n"
            "lab.lab_up(%r, [{'name': 'h%%d' %% i} for i in range(4)], %r, %r)\n"
            % (os.path.join(ROOT, ".build", "collections"), name, state_dir, CACHE))
    proc = subprocess.Popen([sys.executable, "-c", code])
    # Kill the controller side half-way: some hosts started, maybe one without its PID recorded.
    deadline = time.time() + 30
    while time.time() < deadline:
        if any(part.startswith("process") for part in leftovers(name, state_dir)):
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert leftovers(name, state_dir) != []
    lab.lab_down(state_dir)
    assert leftovers(name, state_dir) == []


def test_two_labs_get_their_own_bridge_and_subnet(scratch):
    (name_one, first), (name_two, second) = scratch("itone"), scratch("ittwo")
    one = lab.lab_up(name_one, [{"name": "a"}], first, CACHE)
    two = lab.lab_up(name_two, [{"name": "a"}], second, CACHE)
    assert one["bridge"] != two["bridge"]
    assert one["ipv4_subnet"] != two["ipv4_subnet"]
    assert one["ipv6_subnet"] != two["ipv6_subnet"]
    assert ssh(one, "a", "true").returncode == 0 and ssh(two, "a", "true").returncode == 0
    lab.lab_down(first)
    # Removing one lab leaves the other one running.
    assert leftovers(name_one, first) == []
    assert ssh(two, "a", "systemctl is-system-running --wait").stdout.strip() == "running"
    lab.lab_down(second)
    assert leftovers(name_two, second) == []


def test_a_host_that_never_answers_fails_within_the_timeout(scratch):
    name, state_dir = scratch("itslow")
    # No host can answer SSH before it has booted: with no time to boot, the lab gives up at once,
    # naming the host and its console log, instead of waiting.
    started = time.time()
    with pytest.raises(lab.LabError, match=r"no SSH answer within 0 s from a \(.*console log .*console.log"):
        lab.lab_up(name, [{"name": "a"}], state_dir, CACHE, boot_timeout=0)
    assert time.time() - started < 30
    lab.lab_down(state_dir)
    assert leftovers(name, state_dir) == []


def test_the_bridge_address_is_the_hosts_gateway(scratch):
    name, state_dir = scratch("itgw")
    up = lab.lab_up(name, [{"name": "a"}], state_dir, CACHE)
    route = ssh(up, "a", "ip -4 route show default").stdout
    assert "via %s dev host0" % up["gateway_ipv4"] in route
    sock = socket.create_connection((up["hosts"][0]["ipv4"], 22), timeout=5)
    try:
        assert sock.recv(8).startswith(b"SSH-2.0")
    finally:
        sock.close()


def _nspawn_alive(pid):
    """True while ``pid`` is a systemd-nspawn, running or exited but not yet collected (a zombie has no cmdline)."""
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip() == "systemd-nspawn"
    except OSError:
        return False


def test_make_lab_down_returns_only_once_every_process_interface_and_mount_is_gone(scratch):
    """make lab-up, then make lab-down: checked the moment the playbook returns, nothing of the lab is left.

    The lab is started by another process that exits, as 'make lab-up' does, so its systemd-nspawn processes
    belong to PID 1 of this machine, which collects them in its own time; before the fix the playbook returned
    while they were still listed (as zombies).
    """
    name, state_dir = scratch("itmkdown")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.mseg.fleet.plugins.module_utils._lab import lab\n"
            "lab.lab_up(%r, [{'name': 'a'}, {'name': 'b'}], %r, %r)\n"
            % (os.path.join(ROOT, ".build", "collections"), name, state_dir, CACHE))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    records = lab.LabState(state_dir).data["hosts"]
    pids = [rec["pid"] for rec in records.values()]
    links = [rec["host_veth"] for rec in records.values()] + [lab.bridge_name(name)]
    assert pids and all(_nspawn_alive(pid) for pid in pids)

    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", MSEG_LAB_STATE_DIR=os.path.dirname(state_dir))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                           os.path.join(ROOT, "playbooks", "lab", "down.yml"), "-e", "lab_name=" + name],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    alive = [pid for pid in pids if _nspawn_alive(pid)]
    present = [ifname for ifname in links if lab.link_exists(ifname)]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert alive == [] and present == [], "right after lab-down: processes %s, interfaces %s" % (alive, present)
    assert leftovers(name, state_dir) == []
