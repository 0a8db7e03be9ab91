"""The agent end to end on lab hosts: real controllers (nginx, mutual TLS, keepalived), real signed bundles.

The tests run in file order and each leaves every controller up and every agent following the controllers.
Publishing goes through the real playbook (mseg.fleet.publish); the agents are only ever observed (their status,
their runtime log, the live nftables table, /proc and systemd) or disturbed the way an incident would (a killed
process, a stopped controller, a tampered or replayed file on the controllers, a power cycle).
"""

import base64
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import testinfra

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils._lab import lab  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.host import kernel  # noqa: E402

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
AGENTS = ["agt-01", "agt-02", "agt-03"]
CONTROLLERS = {"agt-ctl-01": "10.213.188.11", "agt-ctl-02": "10.213.188.12"}
ADDRESS = {"agt-01": "10.213.188.21", "agt-02": "10.213.188.22", "agt-03": "10.213.188.23"}
CURRENT = "/var/lib/mseg-controller/current"
RESULTS = os.path.join(ROOT, ".build", "agent-propagation.json")
PUBLISHES = 4
ENV = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
BASE_RULES = [
    {"id": 10, "name": "agents-to-controllers", "from": {"tags": {"role": "agent"}},
     "to": {"tags": {"role": "controller"}}, "ports": ["tcp/8443"]},
    {"id": 20, "name": "agents-ssh", "from": {"tags": {"role": "agent"}}, "to": {"tags": {"role": "agent"}},
     "ports": ["tcp/22"]},
]
_generation = [0]


def host(name):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, INVENTORY))


def run(*args, check=True):
    proc = subprocess.run(list(args), capture_output=True, text=True, cwd=ROOT, timeout=900, env=ENV, check=False)
    if check and proc.returncode != 0:
        pytest.fail("%s exited %d:\n%s\n%s" % (" ".join(args), proc.returncode, proc.stdout[-5000:],
                                               proc.stderr[-2000:]))
    return proc


def publish(controllers=None):
    """Publish a policy that differs from the last one (a rule 1000+n opens tcp/n+9000 between agents)."""
    _generation[0] += 1
    rules = BASE_RULES + [{"id": 1000 + _generation[0], "from": {"tags": {"role": "agent"}},
                           "to": {"tags": {"role": "agent"}}, "ports": ["tcp/%d" % (9000 + _generation[0])]}]
    extra = {"mseg_policy": {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": rules}}
    if controllers:
        extra["mseg_controllers"] = controllers
    run("ansible-playbook", "-i", INVENTORY, "mseg.fleet.publish", "-e", json.dumps(extra))


MSEG = "%s/%s" % (contract.HOST_CLI_DIR, contract.HOST_CLI)


def status(name):
    """The agent's status, read often while waiting: the CLI over SSH (mseg.fleet.host_cli is proven below)."""
    return json.loads(host(name).check_output("%s status --json" % MSEG))


def run_host_cli(name, command, **options):
    """The host CLI the way playbooks call it, the module mseg.fleet.host_cli: the task's result.

    ansible-core 2.19's --tree output, which testinfra reads, no longer carries ``failed``: a failed task is one
    without an ``answer``."""
    return host(name).ansible("mseg.fleet.host_cli", " ".join(["command=%s" % command] + [
        "%s=%s" % item for item in sorted(options.items())]), check=False)


def host_cli(name, command, **options):
    result = run_host_cli(name, command, **options)
    assert "answer" in result, result.get("msg")
    return result


def served(controller, name):
    """The envelope a controller serves to ``name`` and its decoded payload."""
    raw = host(controller).check_output("cat %s/%s.json" % (CURRENT, name))
    payload = json.loads(base64.b64decode(json.loads(raw)["payload"]))
    return raw, payload


def table_sha(name):
    return hashlib.sha256(host(name).check_output("nft -s list table inet mseg").encode()).hexdigest()


def wait_for(what, predicate, timeout=30, step=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    pytest.fail("timed out after %ss waiting for %s" % (timeout, what))


def applied_serial(name, serial):
    st = status(name)
    return st.get("serial") == serial and (st.get("last_apply") or {}).get("what", "").startswith(
        "serial %d " % serial)


def runtime_log(name):
    return host(name).check_output("cat /var/log/mseg-agent/runtime.log")


def probe(src, dst, port):
    out = host(src).ansible("mseg.fleet.probe", json.dumps({"targets": [
        {"name": dst, "address": ADDRESS[dst], "port": port}], "timeout": 1.0}), check=False)
    return out["results"][0]["result"]


def services(action, *units):
    for controller in CONTROLLERS:
        for unit in units:
            host(controller).check_output("systemctl %s %s" % (action, unit))


# --------------------------------------------------------------------------- the service


@pytest.mark.parametrize("name", AGENTS)
def test_service_is_pinned_limited_and_confined(name):
    node = host(name)
    pid = node.check_output("systemctl show -p MainPID --value mseg-agent")
    assert pid != "0"
    proc = dict(line.split(":", 1) for line in node.check_output("cat /proc/%s/status" % pid).splitlines())
    assert proc["Cpus_allowed_list"].strip() == "0"
    assert proc["CapEff"].strip() == "%016x" % (1 << 12)  # CAP_NET_ADMIN only
    assert proc["CapBnd"].strip() == "%016x" % (1 << 12)
    uid = node.check_output("id -u mseg-agent")
    assert proc["Uid"].split()[:2] == [uid, uid]
    assert node.check_output("ps -o comm= -p %s" % pid) == "mseg-agent"
    shown = dict(line.split("=", 1) for line in node.check_output(
        "systemctl show mseg-agent -p NoNewPrivileges -p ProtectSystem -p PrivateDevices -p User "
        "-p CPUQuotaPerSecUSec -p MemoryMax -p CapabilityBoundingSet -p AmbientCapabilities").splitlines())
    assert shown == {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateDevices": "yes",
                     "User": "mseg-agent", "CPUQuotaPerSecUSec": "500ms", "MemoryMax": str(256 * 1024 * 1024),
                     "CapabilityBoundingSet": "cap_net_admin", "AmbientCapabilities": "cap_net_admin"}
    # The kernel enforces the quota and the memory limit in the service's own cgroup v2 (real Debian 12 hosts).
    # This machine mounts cgroup v1 and gives the lab containers no controllers of their own, so there the
    # limits are only systemd's configuration (checked above); the affinity is enforced either way.
    cgroup = "/sys/fs/cgroup/system.slice/mseg-agent.service"
    if node.file(cgroup + "/memory.max").exists:
        assert node.check_output("cat %s/cpu.max" % cgroup) == "50000 100000"
        assert node.check_output("cat %s/memory.max" % cgroup) == str(256 * 1024 * 1024)
    # /etc/mseg is root's 0700 and so are the agent's configuration and key in it (the service gets them as
    # credentials; the root CLI trusts them only so); its state directory 0700, files 0600
    assert node.file("/etc/mseg").mode == 0o700 and node.file("/etc/mseg").user == "root"
    for path in ("/etc/mseg/agent.json", "/etc/mseg/bundle-signing.pub"):
        assert (node.file(path).mode, node.file(path).user) == (0o600, "root")
    # no supplementary group (no journal), and the drop log is collecting from NFLOG with CAP_NET_ADMIN alone
    journal = node.check_output("getent group systemd-journal | cut -d: -f3")
    assert journal not in proc["Groups"].split()
    wait_for("the drop log's heartbeat", lambda: "drop log: collecting on %s from NFLOG groups 2710,2711,2712" % name
             in runtime_log(name))
    assert node.file("/var/lib/mseg-agent").mode == 0o700
    modes = node.check_output("find /var/lib/mseg-agent -type f -printf '%m %u\\n' | sort -u")
    assert set(modes.splitlines()) == {"600 mseg-agent"}
    # the process cannot write /etc (ProtectSystem=strict) and sees no devices (PrivateDevices)
    assert "mseg-agent" in node.check_output("ls -l /var/log/mseg-agent/runtime.log")


def test_a_renewed_certificate_reaches_the_running_agent():
    """Issue 15 item 10: the agent reads root-owned copies of the pki role's TLS files its group may read (not
    LoadCredential=, which copied them once at start); a renewal in /etc/mseg/tls is copied by mseg-agent-tls.path
    and taken by the running agent, with no restart."""
    node = host("agt-01")
    share = node.file("/etc/mseg-agent")
    assert (share.mode, share.user, share.group) == (0o750, "root", "mseg-agent")
    for name in ("agent.key", "agent.crt", "ca.crt", "crl.pem"):
        copy = node.file("/etc/mseg-agent/" + name)
        assert (copy.mode, copy.user, copy.group) == (0o640, "root", "mseg-agent")
    pid = node.check_output("systemctl show -p MainPID --value mseg-agent")
    taken = runtime_log("agt-01").count("the TLS files changed")
    # a renewal as the pki role writes one: a new file renamed over the old (the same certificate here)
    node.check_output("cp /etc/mseg/tls/agent.crt /etc/mseg/tls/.renewed && mv /etc/mseg/tls/.renewed "
                      "/etc/mseg/tls/agent.crt")
    wait_for("the running agent to take the renewed files",
             lambda: runtime_log("agt-01").count("the TLS files changed") > taken, timeout=30)
    assert node.check_output("systemctl show -p MainPID --value mseg-agent") == pid


def test_the_runtime_log_is_rotated_once_it_outgrows_its_size():
    """The timer checks the size every 15 min (the distribution's logrotate runs daily); later tests see the agent
    go on logging into the new file (they read it after publishing)."""
    node = host("agt-03")
    assert node.check_output("systemctl is-enabled mseg-agent-logrotate.timer") == "enabled"
    assert node.check_output("systemctl is-active mseg-agent-logrotate.timer") == "active"
    node.check_output("truncate -s 11M /var/log/mseg-agent/runtime.log")
    node.check_output("systemctl start mseg-agent-logrotate.service")
    rotated, fresh = node.file("/var/log/mseg-agent/runtime.log.1"), node.file("/var/log/mseg-agent/runtime.log")
    assert rotated.exists and rotated.size >= 11 * 1024 * 1024
    assert fresh.size < 1024 * 1024 and (fresh.mode, fresh.user) == (0o600, "mseg-agent")


@pytest.mark.parametrize("cpus, message", [
    ([0, 4095], "agent_cpus 0,4095 names CPU(s) 4095 that agt-01 does not have online (online: {online}); "
                "choose agent_cpus among them"),
    ("0-x", "cpu_list: '0-x' is not a CPU list; write CPU numbers and ranges such as 1 or '0-3,6' or [2, 3]"),
])
def test_agent_cpus_the_host_cannot_honour_are_refused_before_anything_changes(cpus, message):
    node = host("agt-01")
    online = kernel.parse_cpu_list(node.file("/sys/devices/system/cpu/online").content_string)
    unit = node.check_output("systemctl cat mseg-agent")
    proc = run("ansible-playbook", "-i", INVENTORY, "mseg.fleet.agent", "--limit", "agt-01",
               "-e", json.dumps({"agent_cpus": cpus}), check=False)
    assert proc.returncode != 0
    output = " ".join((proc.stdout + proc.stderr).split())  # ansible-core 2.19 prints failures on stderr
    assert message.format(online=",".join(str(cpu) for cpu in online)) in output, output[-3000:]
    assert node.check_output("systemctl cat mseg-agent") == unit


@pytest.mark.parametrize("name", AGENTS)
def test_every_agent_applied_its_bundle(name):
    _raw, payload = served("agt-ctl-01", name)
    wait_for("%s to apply serial %d" % (name, payload["serial"]), lambda: applied_serial(name, payload["serial"]))
    st = status(name)
    assert st["mode"] == "enforce" and st["bundle"]["policy_digest"] == payload["policy_digest"]
    listing = host(name).check_output("nft list table inet mseg")
    assert "rule_10_out" in listing and "rule_20_in" in listing
    text = host(name).check_output("%s status" % MSEG)
    assert "serial       %d" % payload["serial"] in text and "rule_20_in" in text
    answer = host_cli(name, "status")["answer"]
    assert answer["serial"] == payload["serial"] and "rule_20_in" in [c["name"] for c in answer["counters"]]


# --------------------------------------------------------------------------- propagation


def test_publish_reaches_every_agent_within_seconds():
    """Publish -> applied, PUBLISHES times; propagation is measured from the first replica's switch to each apply."""
    for name in AGENTS:  # rotation: the running agent keeps writing to the new runtime.log
        host(name).check_output("logrotate --force /etc/logrotate.d/mseg-agent")
        assert host(name).file("/var/log/mseg-agent/runtime.log.1").exists
    delays = []
    playbook = []
    for _round in range(PUBLISHES):
        started = time.time()
        publish()
        playbook.append(time.time() - started)
        switched = min(float(host(c).check_output(
            "python3 -c \"import os; print(os.lstat('%s').st_mtime)\"" % CURRENT)) for c in CONTROLLERS)
        for name in AGENTS:
            serial = served("agt-ctl-01", name)[1]["serial"]
            wait_for("%s to apply serial %d" % (name, serial), lambda: applied_serial(name, serial), timeout=20)
            delays.append(status(name)["last_apply"]["epoch"] - switched)
    delays.sort()
    result = {"agents": len(AGENTS), "publishes": PUBLISHES, "samples": len(delays),
              "p50_s": round(statistics.median(delays), 3), "p100_s": round(delays[-1], 3),
              "interval_s": 2.0, "jitter": 0.2, "publish_playbook_p50_s": round(statistics.median(playbook), 3),
              "load_average": os.getloadavg()[0]}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as handle:
        json.dump(result, handle, indent=1)
    print("propagation over %d agents x %d publishes: p50 %.2f s, p100 %.2f s" % (
        len(AGENTS), PUBLISHES, result["p50_s"], result["p100_s"]))
    assert delays[0] >= 0
    assert result["p100_s"] < 5.0
    for name in AGENTS:
        assert "bundle serial" in runtime_log(name)


# --------------------------------------------------------------------------- refusals


def _tamper_payload(raw):
    outer = json.loads(raw)
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["ruleset"] = payload["ruleset"].replace(" drop\n", " accept\n")
    assert payload["ruleset"] != json.loads(base64.b64decode(outer["payload"]))["ruleset"]
    payload["ruleset_sha256"] = hashlib.sha256(payload["ruleset"].encode()).hexdigest()
    outer["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).decode()
    return json.dumps(outer, sort_keys=True, separators=(",", ":"))


def _serve(name, text):
    for controller in CONTROLLERS:
        host(controller).check_output("cat > %s/%s.json <<'EOF'\n%s\nEOF" % (CURRENT, name, text))


def test_tampered_bundle_is_refused_and_the_old_policy_stays():
    raw, payload = served("agt-ctl-01", "agt-01")
    before = table_sha("agt-01")
    _serve("agt-01", _tamper_payload(raw))
    try:
        wait_for("the refusal", lambda: (status("agt-01").get("last_error") or {}).get("kind") == "signature")
        assert "signature mismatch" in runtime_log("agt-01")
        assert table_sha("agt-01") == before
        assert status("agt-01")["serial"] == payload["serial"]
    finally:
        _serve("agt-01", raw)
    # the genuine file again: identical to what the agent holds, nothing changes
    time.sleep(3)
    assert table_sha("agt-01") == before


def test_older_serial_is_refused():
    raw, payload = served("agt-ctl-01", "agt-02")
    releases = host("agt-ctl-01").check_output("ls -d /var/lib/mseg-controller/releases/*/").split()
    older = None
    for directory in releases:
        text = host("agt-ctl-01").check_output("cat %sagt-02.json" % directory)
        serial = json.loads(base64.b64decode(json.loads(text)["payload"]))["serial"]
        if serial < payload["serial"]:
            older = text
    assert older, "no older release kept on the controller"
    before = table_sha("agt-02")
    _serve("agt-02", older)
    try:
        wait_for("the replay refusal", lambda: (status("agt-02").get("last_error") or {}).get("kind") == "replay")
        assert table_sha("agt-02") == before
        assert "replay or rollback" in runtime_log("agt-02")
    finally:
        _serve("agt-02", raw)


# --------------------------------------------------------------------------- failures


def test_failover_when_the_vip_and_the_first_replica_are_down():
    services("stop", "keepalived")
    host("agt-ctl-01").check_output("systemctl stop nginx")
    try:
        publish(controllers="agt-ctl-02")
        for name in AGENTS:
            serial = served("agt-ctl-02", name)[1]["serial"]
            wait_for("%s to apply serial %d from the last replica" % (name, serial),
                     lambda: applied_serial(name, serial), timeout=30)
            assert status(name)["last_poll"]["controller"] == "https://10.213.188.12:8443/v1/bundle"
            assert "failover to https://10.213.188.12:8443/v1/bundle" in runtime_log(name)
    finally:
        host("agt-ctl-01").check_output("systemctl start nginx")
        services("start", "keepalived")
        publish()


def test_killed_agent_is_restarted_with_the_policy_intact():
    node = host("agt-03")
    # the previous test ends by publishing again: let agt-03 apply that before the table is measured
    serial = served("agt-ctl-02", "agt-03")[1]["serial"]
    wait_for("agt-03 to apply serial %d" % serial, lambda: applied_serial("agt-03", serial), timeout=30)
    before = table_sha("agt-03")
    starts = runtime_log("agt-03").count("mseg-agent starting")
    pid = node.check_output("systemctl show -p MainPID --value mseg-agent")
    node.check_output("systemctl kill --signal=SIGKILL mseg-agent")
    assert table_sha("agt-03") == before  # the kernel keeps the table; nothing flushes it
    wait_for("systemd to restart the agent", lambda: node.check_output(
        "systemctl show -p MainPID --value mseg-agent") not in ("0", pid) and node.check_output(
        "systemctl is-active mseg-agent || true") == "active", timeout=20)
    assert table_sha("agt-03") == before
    assert runtime_log("agt-03").count("mseg-agent starting") == starts + 1


def test_bypass_works_with_every_controller_unreachable():
    services("stop", "keepalived", "nginx")
    try:
        wait_for("agt-01 to see every controller down",
                 lambda: status("agt-01")["last_poll"]["result"] == "unreachable", timeout=30)
        host("agt-01").ansible("mseg.fleet.probe_listener", "ports=tcp/5432 duration=300 hostname=agt-01",
                               check=False)
        assert probe("agt-02", "agt-01", "tcp/5432") == "timeout"
        predicted = host("agt-01").ansible("mseg.fleet.host_cli", "command=mode mode=bypass", check=True)
        assert predicted["changed"] and status("agt-01")["mode"] == "enforce"  # check mode changes nothing
        out = host_cli("agt-01", "mode", mode="bypass")
        assert out["changed"] and out["answer"]["mode"] == "bypass" and "mode bypass set locally" in out["msg"]
        assert not host_cli("agt-01", "mode", mode="bypass")["changed"]
        assert probe("agt-02", "agt-01", "tcp/5432") == "open"
        assert "mode_bypass" in host("agt-01").check_output("nft list table inet mseg")
        # the override survives a restart of the agent
        host("agt-01").check_output("systemctl restart mseg-agent")
        time.sleep(2)
        assert probe("agt-02", "agt-01", "tcp/5432") == "open"
        st = status("agt-01")
        assert st["mode"] == "bypass" and st["override"]["kind"] == "bypass"
        assert "mode bypass set by" in runtime_log("agt-01")
        assert "cleared the local override bypass" in host_cli("agt-01", "mode", mode="clear")["msg"]
        assert probe("agt-02", "agt-01", "tcp/5432") == "timeout"
        # observe locally: the signed observe ruleset lets the flow through (audited); clear drops it again
        assert "mode observe set locally" in host("agt-01").check_output("%s mode observe" % MSEG)
        assert probe("agt-02", "agt-01", "tcp/5432") == "open"
        assert "[MSEG-AUDIT]" in host("agt-01").check_output("nft list table inet mseg")
        assert status("agt-01")["mode"] == "observe"
        assert "cleared the local override mode" in host("agt-01").check_output("%s mode clear" % MSEG)
        assert probe("agt-02", "agt-01", "tcp/5432") == "timeout"
    finally:
        host("agt-01").check_output("%s mode clear" % MSEG)
        services("start", "nginx", "keepalived")
        host("agt-01").ansible("mseg.fleet.probe_listener", "state=stopped", check=False)


def test_trace_on_the_host_names_the_deciding_rule():
    def trace(src, dst, port):
        out = host_cli("agt-01", "trace", src=src, dst=dst, port=port)
        assert out["rc"] == (0 if out["answer"]["allowed"] else 3) and not out["changed"]
        return out["answer"]

    failed = run_host_cli("agt-01", "trace", src="10.9.9.9", dst="10.9.9.8", port="tcp/1")
    assert "answer" not in failed and failed["rc"] == 1
    assert failed["msg"].startswith("mseg: one of --src and --dst must be an address of this host (it has ")
    ssh = trace(ADDRESS["agt-02"], ADDRESS["agt-01"], "tcp/22")
    assert (ssh["direction"], ssh["allowed"], ssh["decided_by"]) == ("ingress", True, ["rule_20_in"])
    db = trace(ADDRESS["agt-02"], ADDRESS["agt-01"], "tcp/5432")
    assert (db["allowed"], db["decided_by"]) == (False, ["default_in"])
    # agents -> controllers on 8443 is a system flow the controller role declares (issue 15 item 9): its system rule
    # comes before the policy's rules, so it decides, not the policy's rule 10
    out = trace(ADDRESS["agt-01"], CONTROLLERS["agt-ctl-01"], "tcp/8443")
    assert (out["direction"], out["allowed"], out["decided_by"]) == ("egress", True, [contract.system_counter(
        "controller.agents", "egress")])
    # what trace predicts is what the live table does
    host("agt-01").ansible("mseg.fleet.probe_listener", "ports=tcp/5432 duration=120 hostname=agt-01", check=False)
    try:
        assert probe("agt-02", "agt-01", "tcp/5432") == "timeout"
    finally:
        host("agt-01").ansible("mseg.fleet.probe_listener", "state=stopped", check=False)
    # and the drop log of agt-01 (NFLOG in its own network namespace) recorded the real dropped packet
    dropped = "INFO Policy Drop: ID=0 src=%s dst=%s proto=tcp dport=5432 dir=ingress" % (
        ADDRESS["agt-02"], ADDRESS["agt-01"])
    wait_for("the drop log line on agt-01", lambda: dropped in runtime_log("agt-01"), timeout=10)


def test_rollback_holds_the_previous_bundle_until_cleared():
    node = host("agt-01")
    current = status("agt-01")
    previous = json.loads(node.check_output("cat /var/lib/mseg-agent/previous.meta.json"))["serial"]
    assert previous < current["serial"]
    rolled = host_cli("agt-01", "rollback")
    assert rolled["changed"] and "rolled back to the previous bundle" in rolled["msg"]
    st = status("agt-01")
    assert st["override"]["kind"] == "rollback" and st["override"]["bundle"]["serial"] == previous
    assert st["serial"] == current["serial"]  # the highest accepted serial never goes down
    assert "rule_%d_in" % (1000 + _generation[0]) not in node.check_output("nft list table inet mseg")
    assert "local override: rollback to serial %d" % previous in runtime_log("agt-01")
    assert host_cli("agt-01", "mode", mode="clear")["changed"]
    wait_for("the current bundle again", lambda: "rule_%d_in" % (1000 + _generation[0]) in node.check_output(
        "nft list table inet mseg"))
    assert status("agt-01")["override"] is None


# --------------------------------------------------------------------------- boot


def _power_cycle(name):
    """Power the lab host off (SIGTERM to its systemd-nspawn, as lab destroy does) and boot the same disk again."""
    state_dir = os.path.join(os.environ.get("MSEG_LAB_STATE_DIR", os.path.join(ROOT, ".build", "lab")), "mol-agent")
    state, _alive = lab.lab_status(state_dir)
    rec = state.data["hosts"][name]
    os.kill(rec["pid"], signal.SIGTERM)
    wait_for("%s to power off" % name, lambda: not lab.is_lab_process(rec["pid"], rec["root"]), timeout=60)
    lab._reap(rec["pid"])
    proc = lab._start_host(rec, rec["root"], state.data["bridge"], os.path.join(rec["dir"], "console.log"), (),
                           rec["cgroups"])
    rec["pid"] = proc.pid
    state.save()
    wait_for("%s to answer SSH" % name, lambda: lab._ssh_ready(rec["ipv4"], time.time() + 2, lambda: True),
             timeout=90)


@pytest.mark.skipif(os.environ.get("MOLECULE_DRIVER_NAME", "default") != "default",
                    reason="the power cycle restarts a lab host through the lab's state (systemd-nspawn); "
                           "driver %r has no lab" % os.environ.get("MOLECULE_DRIVER_NAME"))
def test_reboot_restores_the_policy_before_the_network():
    services("stop", "keepalived", "nginx")  # nothing to pull: the restore must come from the host's own state
    try:
        before = table_sha("agt-02")
        serial = status("agt-02")["serial"]
        boot = host("agt-02").check_output("cat /proc/sys/kernel/random/boot_id")
        _power_cycle("agt-02")
        node = host("agt-02")
        assert node.check_output("cat /proc/sys/kernel/random/boot_id") != boot
        assert table_sha("agt-02") == before
        shown = {}
        for unit, prop in (("mseg-agent-restore.service", "ExecMainExitTimestampMonotonic"),
                           ("network-pre.target", "ActiveEnterTimestampMonotonic"),
                           ("systemd-networkd.service", "ExecMainStartTimestampMonotonic")):
            shown[unit] = int(node.check_output("systemctl show -p %s --value %s" % (prop, unit)))
        assert 0 < shown["mseg-agent-restore.service"] <= shown["network-pre.target"] \
            <= shown["systemd-networkd.service"], shown
        assert node.check_output("systemctl show -p Result --value mseg-agent-restore") == "success"
        assert "boot restore: applied serial %d" % serial in node.check_output(
            "journalctl -b -u mseg-agent-restore --no-pager")
    finally:
        services("start", "nginx", "keepalived")
