"""The rollout end to end on lab hosts, proven with packets between them.

Each test drives the real playbooks (rollout, mode, bypass) against the scenario's hosts and measures
reachability with real TCP connections on IPv4 and IPv6 (playbooks/lab/agreement.yml), comparing it pair by pair
with what mseg.fleet.trace predicts. The tests run in file order; each leaves the fleet in enforce.
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import sys

import pytest
import yaml
import testinfra

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils._lab import lab  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import parse_line  # noqa: E402

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
MANAGED = ["app-01", "db-01", "web-01"]
PORTS = ["tcp/443", "tcp/5432", "tcp/8080"]
NF_LOG_ALL_NETNS = "/proc/sys/net/netfilter/nf_log_all_netns"
BROKEN = {"rules": [{"id": 10, "name": "web-to-app", "from": {"tags": {"role": "web"}},
                     "to": {"tags": {"role": "app"}}, "ports": ["tcp/80800"]}]}


# Plain, one-line results whatever Molecule set for its own runs, so messages can be matched.
ENV = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
           ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_CALLBACK_RESULT_FORMAT="json")


def run(*args, check=True):
    proc = subprocess.run(list(args), capture_output=True, text=True, cwd=ROOT, timeout=900, env=ENV, check=False)
    if check and proc.returncode != 0:
        pytest.fail("%s exited %d:\n%s\n%s"
                    % (" ".join(args), proc.returncode, proc.stdout[-6000:], proc.stderr[-3000:]))
    proc.output = proc.stdout + proc.stderr
    return proc


def playbook(name, *extra, check=True):
    return run("ansible-playbook", "-i", INVENTORY, name, *extra, check=check)


def ev(data):
    return ["-e", json.dumps(data)]


def host(name):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, INVENTORY))


def listings():
    return {name: host(name).check_output("nft -s list table inet mseg") for name in MANAGED}


def start_db_listener():
    run("ansible", "db", "-i", INVENTORY, "-m", "mseg.fleet.probe_listener",
        "-a", json.dumps({"ports": ["tcp/5432"], "duration": 3600}))


def agreement(**extra):
    """Measure every pair with packets and compare with trace (which sees ``extra`` vars, e.g. the mode the test
    switched to); returns ({(src, dst, family, port): open}, {...: allowed})."""
    with tempfile.NamedTemporaryFile(suffix=".json") as output:
        playbook(os.path.join(ROOT, "playbooks", "lab", "agreement.yml"),
                 *ev(dict({"reachability_ports": PORTS, "reachability_families": ["ipv4", "ipv6"]}, **extra,
                          agreement_output=output.name)))
        with open(output.name, encoding="utf-8") as handle:
            data = json.load(handle)
    assert data["agreement"]["agree"], data["agreement"]["mismatches"]
    return {(m["src"], m["dst"], m["family"], m["port"]): m["reachable"] for m in data["measured"]}, \
        {(p["src"], p["dst"], p["family"], p["port"]): p["allowed"] for p in data["predicted"]}


@pytest.fixture(name="enforced", scope="module")
def fixture_enforced():
    return agreement()


def test_enforce_is_what_the_policy_says_and_what_trace_predicts(enforced):
    measured, _predicted = enforced
    for family in ("ipv4", "ipv6"):
        assert measured[("web-01", "app-01", family, "tcp/8080")]
        assert measured[("app-01", "db-01", family, "tcp/5432")]
        assert not measured[("web-01", "db-01", family, "tcp/5432")]     # deny 30
        assert not measured[("db-01", "app-01", family, "tcp/8080")]     # default deny
        assert not measured[("out-01", "db-01", family, "tcp/5432")]     # nothing allows it
    assert measured[("out-01", "web-01", "ipv4", "tcp/443")]             # rule 50 (cidr)
    assert not measured[("out-01", "web-01", "ipv4", "tcp/8080")]


def test_a_second_run_changes_nothing():
    start_db_listener()
    recap = playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed"})).output
    for name in MANAGED:
        assert re.search(r"^%s\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0" % name, recap, re.M), recap


def _kernel_log_since(marker):
    """Kernel log lines after our marker (the ring buffer may drop old lines, so no line counting)."""
    lines = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()
    for index, line in enumerate(lines):
        if marker in line:
            return lines[index + 1:]
    pytest.fail("the kernel log lost the marker %s; it wrapped during the test" % marker)


def test_observe_passes_everything_and_audits_exactly_what_enforce_would_drop(enforced):
    _measured, predicted_enforce = enforced
    playbook("mseg.fleet.mode", *ev({"mseg_mode": "observe", "mseg_hosts": "managed"}))
    with open(NF_LOG_ALL_NETNS, encoding="ascii") as handle:
        saved = handle.read().strip()
    with open(NF_LOG_ALL_NETNS, "w", encoding="ascii") as handle:
        handle.write("1")
    marker = "mseg-molecule-policy-observe-%s" % uuid.uuid4().hex
    try:
        with open("/dev/kmsg", "w", encoding="ascii") as kmsg:
            kmsg.write(marker + "\n")
        measured, _predicted = agreement(mseg_mode="observe")
        log = _kernel_log_since(marker)
    finally:
        with open(NF_LOG_ALL_NETNS, "w", encoding="ascii") as handle:
            handle.write(saved)
    assert all(measured.values()), sorted(k for k, v in measured.items() if not v)
    addresses = {}
    for name in MANAGED + ["out-01"]:
        for address in host(name).ansible.get_variables()["mseg_addresses"]:
            addresses[address] = name
    audited = set()
    for line in log:
        event = parse_line(line)
        if event and event.kind == "AUDIT" and event.src in addresses and event.dst in addresses:
            family = "ipv6" if ":" in event.src else "ipv4"
            audited.add((addresses[event.src], addresses[event.dst], family, event.port))
    would_drop = {key for key, allowed in predicted_enforce.items() if not allowed}
    assert would_drop and audited == would_drop
    # the report an operator reads: built from the NFLOG records each host's drop log collected (mseg-droplog.service
    # on these push-mode hosts, never the kernel log above, which any local user could forge), it holds exactly the
    # would-be drops between the fleet's hosts, per rule and per pair of labels, and names every host as collecting
    with tempfile.TemporaryDirectory() as report_dir:
        playbook("mseg.fleet.observe_report", *ev({"mseg_hosts": "managed", "mseg_observe_report_dir": report_dir}))
        with open(os.path.join(report_dir, "observe-report.json"), encoding="utf-8") as handle:
            report = json.load(handle)
        with open(os.path.join(report_dir, "observe-report.csv"), encoding="utf-8") as handle:
            rows = handle.read().splitlines()
    assert sorted(seen["host"] for seen in report["collecting"]) == MANAGED
    known = set(addresses.values())
    reported = {tuple(flow.split(" -> ")) + (pair["port"],) for pair in report["pairs"] for flow in pair["hosts"]}
    assert {flow for flow in reported if flow[0] in known and flow[1] in known} == \
        {(src, dst, port) for src, dst, _family, port in would_drop}
    assert report["packets"] >= len(would_drop)
    counted = {(pair["src"], pair["dst"], pair["port"], pair["rule"]): pair["packets"] for pair in report["pairs"]}
    assert counted[("role=web", "role=db", "tcp/5432", 30)] >= 2       # web-01 -> db-01 on IPv4 and IPv6
    names = {rule["rule"]: rule["name"] for rule in report["rules"]}
    assert names[30] == "no-web-to-db" and names[0] == "default"
    assert rows[0] == "src,dst,port,rule,direction,packets,hosts"
    assert any(row.startswith("role=web,role=db,tcp/5432,30,") for row in rows), rows


def droplog_state(name):
    return host(name).run("systemctl is-active " + contract.DROPLOG_UNIT).stdout.strip()


def test_the_push_mode_drop_log_is_rotated_and_writes_on():
    """The drop log's runtime.log is rotated as the agent's is (its own size timer), and the drop log writes on
    into a new file: a packet rule 30 drops on web-01's egress shows up in it."""
    node = host("web-01")
    rotation = os.path.splitext(contract.DROPLOG_UNIT)[0]
    assert node.check_output("systemctl is-enabled %s-logrotate.timer" % rotation) == "enabled"
    assert node.check_output("systemctl is-active %s-logrotate.timer" % rotation) == "active"
    node.check_output("logrotate --force --state /var/lib/logrotate/%s.status /etc/logrotate.d/%s"
                      % (rotation, rotation))
    assert node.file(contract.DROPLOG_RUNTIME_LOG + ".1").exists
    db = [a for a in host("db-01").ansible.get_variables()["mseg_addresses"] if ":" not in a][0].split("/")[0]
    deadline = time.monotonic() + 30
    written = ""
    while "ID=30 " not in written and time.monotonic() < deadline:
        node.run("timeout 1 bash -c '</dev/tcp/%s/5432'" % db)
        written = node.run("cat " + contract.DROPLOG_RUNTIME_LOG).stdout
    assert "ID=30 " in written, node.run(
        "ls -la --time-style=full-iso %s; tail -n 5 %s.1; systemctl status --no-pager -n 10 %s; nft list chain inet mseg "
        "deny_30_out" % (os.path.dirname(contract.DROPLOG_RUNTIME_LOG), contract.DROPLOG_RUNTIME_LOG,
                         contract.DROPLOG_UNIT)).stdout
    assert droplog_state("web-01") == "active"


def test_bypass_passes_everything_and_is_not_lifted_behind_the_operators_back():
    playbook("mseg.fleet.bypass", *ev({"mseg_hosts": "managed"}))
    for name in MANAGED:
        assert "counter %s" % contract.EMERGENCY_MARKER in host(name).check_output("nft list table " + contract.TABLE)
        # a bypass table logs nothing: the push-mode drop log is stopped until the host leaves bypass
        assert droplog_state(name) == "inactive"
    measured = {}
    with tempfile.NamedTemporaryFile(suffix=".json") as output:
        playbook(os.path.join(ROOT, "playbooks", "lab", "reachability.yml"),
                 *ev({"reachability_ports": PORTS, "reachability_families": ["ipv4", "ipv6"],
                      "reachability_output": output.name}))
        with open(output.name, encoding="utf-8") as handle:
            for item in json.load(handle):
                measured[(item["src"], item["dst"], item["family"], item["port"])] = item["reachable"]
    assert measured and all(measured.values()), sorted(k for k, v in measured.items() if not v)
    # a normal rollout leaves a bypassed host alone and says how to lift it
    again = playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed", "mseg_health_probes": []}), check=False)
    assert again.returncode != 0
    assert "is in bypass" in again.output and "mseg.fleet.mode" in again.output
    assert "counter %s" % contract.EMERGENCY_MARKER in host("web-01").check_output("nft list table " + contract.TABLE)


def test_enforce_again():
    playbook("mseg.fleet.mode", *ev({"mseg_mode": "enforce", "mseg_hosts": "managed"}))
    assert {name: droplog_state(name) for name in MANAGED} == {name: "active" for name in MANAGED}
    agreement()


def test_trace_live_shows_the_counters_of_the_deciding_rule_move_on_both_ends():
    start_db_listener()
    proc = playbook("mseg.fleet.trace", *ev({"mseg_trace_hosts": "managed", "mseg_trace_src": "app-01",
                                             "mseg_trace_dst": "db-01", "mseg_trace_port": "tcp/5432",
                                             "mseg_trace_live": True}))
    text = " ".join(proc.output.split())
    assert re.search(r"app-01: [^\"]*\brule_20_out \+\d+", text), text[-3000:]
    assert re.search(r"db-01: [^\"]*\brule_20_in \+\d+", text), text[-3000:]


def test_a_broken_policy_fails_before_any_host_changes():
    before = listings()
    proc = playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed", "mseg_policy": BROKEN}), check=False)
    assert proc.returncode != 0
    assert "rule 10 (web-to-app): ports[0]: 'tcp/80800' has a port outside 1-65535" in proc.output
    assert "nothing was rendered and no host was touched" in proc.output
    assert listings() == before


def test_a_policy_that_cuts_the_controller_off_rolls_itself_back():
    before = listings()["web-01"]
    lockout = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": []}
    proc = playbook("mseg.fleet.rollout", "--limit", "web-01",
                    *ev({"mseg_hosts": "managed", "mseg_policy": lockout, "mseg_management_auto": False,
                         "policy_confirm_timeout": 15, "mseg_health_probes": []}), check=False)
    assert proc.returncode != 0
    assert "rolled back" in proc.output
    assert host("web-01").check_output("nft -s list table inet mseg") == before


def _policy():
    with open(os.path.join(os.path.dirname(__file__), "..", "molecule.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["provisioner"]["inventory"]["group_vars"]["all"]["mseg_policy"]


def test_a_health_probe_that_cannot_run_fails_before_any_host_changes():
    before = listings()
    proc = playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed",
                                               "mseg_health_probes": [{"dst": "db-1", "port": "tcp/5432"}]}),
                    check=False)
    assert proc.returncode != 0
    found = re.search(r"mseg_health_probes: probe 1: dst db-1 is not a host of the inventory \(([^)]*)\)\. Write each "
                      r"probe as \{dst: <inventory host>, port: tcp/<1-65535> \| udp/<1-65535> \| icmp\}",
                      " ".join(proc.output.split()))
    assert found and sorted(found.group(1).split(", ")) == sorted(MANAGED), proc.output[-3000:]
    assert listings() == before


def _stopped_rollout(policy):
    """Roll ``policy`` out to app then db (app-01 is the first batch) and return its output; it must stop."""
    proc = playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "app:db", "mseg_policy": policy}), check=False)
    assert proc.returncode != 0
    return " ".join(proc.output.split())


def test_an_unhealthy_batch_is_rolled_back_and_the_rollout_stops():
    """A deny between app and db breaks app-01's probe of db-01 in the first batch: the batch is rolled back from its
    backup, the rollout stops naming the host, the probe and the rule, and db-01's batch never comes."""
    start_db_listener()
    before = listings()
    policy = _policy()
    policy["rules"].append({"id": 25, "name": "no-app-to-db", "from": {"tags": {"role": "app"}},
                            "to": {"tags": {"role": "db"}}, "action": "deny"})
    text = _stopped_rollout(policy)
    assert re.search(r"Health check failed on app-01: db-01 tcp/5432 is timeout \([^)]*\b25\b[^)]*\)", text), text[-3000:]
    assert "The batch (app-01) was rolled back to its previous ruleset." in text
    after = listings()
    assert after["app-01"] == before["app-01"]      # restored from its backup
    assert after["db-01"] == before["db-01"]        # its batch never came
    playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed"}))
    assert listings() == before


def test_a_batch_that_breaks_a_services_ingress_is_caught_from_its_clients():
    """Without rule 20, db-01 drops app-01 once db-01's own batch applies. Only app-01 probes db-01, and app-01 is not
    in that batch: the probe must run from app-01 after db-01's batch, and roll db-01 back."""
    start_db_listener()
    before = listings()
    policy = _policy()
    policy["rules"] = [rule for rule in policy["rules"] if rule["id"] != 20]
    text = _stopped_rollout(policy)
    assert re.search(r"Health check failed on db-01: tcp/5432 from app-01 is timeout \(", text), text[-3000:]
    assert "The batch (db-01) was rolled back to its previous ruleset." in text
    after = listings()
    assert after["db-01"] == before["db-01"]        # restored from its backup
    assert after["app-01"] != before["app-01"]      # the first batch passed and keeps the new policy
    playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed"}))
    assert listings() == before


def _digest(name):
    """The policy digest in the header of the ruleset the host persisted."""
    return host(name).check_output("grep -o 'policy=[0-9a-f]*' /etc/mseg/ruleset.nft")


def _console(name, command):
    """Run a command in a lab host's network namespace without SSH, as an operator at its console would."""
    state_dir = os.path.join(os.environ.get("MSEG_LAB_STATE_DIR", os.path.join(ROOT, ".build", "lab")), "mol-policy")
    state, _alive = lab.lab_status(state_dir)
    init = subprocess.run(["pgrep", "-P", str(state.data["hosts"][name]["pid"])], capture_output=True, text=True,
                          check=True).stdout.split()[0]
    subprocess.run(["nsenter", "-t", init, "-n"] + command, check=True)


def test_a_lockout_without_commit_confirmed_is_caught_by_a_fresh_connection():
    """With commit-confirmed off, the apply returns over the connection it already had; the health check's fresh
    connection must fail and stop the rollout (it used to be ignored as unreachable)."""
    before = listings()["web-01"]
    lockout = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": []}
    proc = playbook("mseg.fleet.rollout", "--limit", "web-01",
                    *ev({"mseg_hosts": "managed", "mseg_policy": lockout, "mseg_management_auto": False,
                         "policy_confirm_timeout": 0, "mseg_health_probes": [], "mseg_health_connect_timeout": 5}),
                    check=False)
    text = " ".join(proc.output.split())
    assert proc.returncode != 0
    assert "Health check failed on web-01: the management connection failed" in text, text[-3000:]
    assert "except web-01, which cannot be reached to do it" in text
    _console("web-01", ["nft", "delete", "table", "inet", "mseg"])
    playbook("mseg.fleet.rollout", "--limit", "web-01", *ev({"mseg_hosts": "managed"}))
    assert listings()["web-01"] == before


def test_every_batch_applies_the_policy_the_canary_was_checked_with():
    """A policy edited while a serial rollout runs must not reach the later batches: the rollout compiles once.

    The edit is simulated by a rule name read from the clock each time the policy is templated, so every compile
    gives another digest; all batches must still carry the one the rollout started with.
    """
    policy = _policy()
    policy["rules"][0]["name"] = "web-to-app-{{ lookup('pipe', 'date +%s%N') }}"

    def digests():
        return {name: _digest(name) for name in MANAGED}
    before = digests()
    proc = playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed", "mseg_policy": policy,
                                               "mseg_health_probes": [], "mseg_rollout_batches": [1, 1, 1]}))
    assert proc.output.count("TASK [mseg.fleet.policy : Apply the ruleset]") == 3  # three batches
    after = digests()
    assert len(set(after.values())) == 1, after
    assert set(after.values()).isdisjoint(before.values())  # the edited policy was applied


# Discovery (issue 20): a known traffic pattern, a short window, the proposal enforced and measured. out-01 is the
# monitoring host (role=monitoring) and scrapes every host on tcp/9100; the control node is the bastion (tcp/22);
# a second address on out-01, in no host's addresses, sends the noise.
ADDRESS = {"web-01": "10.213.240.11", "app-01": "10.213.240.21", "db-01": "10.213.240.31", "out-01": "10.213.240.91"}
NOISE = "10.213.240.92"
BASTION = "10.213.240.1"        # the control node on the lab bridge: the tests connect from it
PATTERN = {("web-01", "app-01", "tcp/8080"), ("app-01", "db-01", "tcp/5432")} | \
    {("out-01", name, "tcp/9100") for name in MANAGED}
DISCOVER_MIN = 10   # above what the earlier tests' probes leave in the conntrack tables (TIME_WAIT lasts 120 s)
DISCOVER_UNITS = "mseg-discover.service mseg-discover-cleanup.timer mseg-discover-cleanup.service"
SCRAPE = ("import socket, time\n"
          "for _ in range(%d):\n"
          "    for dst in %r:\n"
          "        try:\n"
          "            socket.create_connection((dst, 9100), 2).close()\n"
          "        except OSError:\n"
          "            pass\n"
          "    time.sleep(1)\n")


def _connect(src, dst, port, times, source=""):
    """``times`` TCP connections from ``src`` (from its address ``source`` if given) to ``dst``'s IPv4 address."""
    host(src).check_output("python3 -c 'import socket; [socket.create_connection((\"%s\", %d), 3, (\"%s\", 0)).close() "
                           "for _ in range(%d)]'" % (ADDRESS[dst], port, source, times))


def _scrape_in_background(seconds):
    """out-01 scrapes every managed host's tcp/9100 once a second for ``seconds``, detached from this test."""
    script = SCRAPE % (seconds, [ADDRESS[name] for name in MANAGED])
    host("out-01").check_output("printf %%s %s > /root/scrape.py && (setsid nohup python3 /root/scrape.py "
                                ">/dev/null 2>&1 &)" % shlex.quote(script))


def test_discover_proposes_the_observed_flows_and_enforcing_the_proposal_opens_exactly_them():
    playbook("mseg.fleet.mode", *ev({"mseg_mode": "observe", "mseg_hosts": "managed"}))
    run("ansible", "managed", "-i", INVENTORY, "-m", "mseg.fleet.probe_listener",
        "-a", json.dumps({"ports": ["tcp/8080", "tcp/5432", "tcp/9100"], "duration": 900}))
    host("out-01").check_output("ip -4 address replace %s/24 dev host0" % NOISE)
    _connect("web-01", "app-01", 8080, 12)
    _connect("app-01", "db-01", 5432, 12)
    _connect("out-01", "app-01", 8080, 2, NOISE)    # noise from an unlabelled address, below the threshold
    for name in MANAGED:                            # the bastion's SSH sessions
        for _attempt in range(12):
            socket.create_connection((ADDRESS[name], 22), 3).close()
    # the scrapes go on through the window: the policy has no rule for them, so each is an audit record
    _scrape_in_background(30)
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report")
        proc = playbook("mseg.fleet.discover", *ev({"mseg_hosts": "managed", "mseg_discover_duration": "10s",
                                                    "mseg_discover_interval": 2, "mseg_discover_dir": report,
                                                    "mseg_discover_min_count": DISCOVER_MIN}))
        assert "Collected on 3 host(s): app-01, db-01, web-01" in proc.output, proc.output[-4000:]
        audit = re.search(r"audit records \(observe mode\): (\d+) used, \d+ outside the window, (\d+) rejected",
                          proc.output)
        assert audit and int(audit.group(1)) >= 3 and int(audit.group(2)) == 0, proc.output[-4000:]
        with open(os.path.join(report, "proposal.yml"), encoding="utf-8") as handle:
            proposal = yaml.safe_load(handle)["mseg_policy"]
        with open(os.path.join(report, "discovery.json"), encoding="utf-8") as handle:
            data = json.load(handle)
        with open(os.path.join(report, "map.svg"), encoding="utf-8") as handle:
            svg = handle.read()
    assert data["coverage"]["uncovered"] == []
    kept = {(f["src"], f["dst"], f["service"]) for f in data["flows"]}
    assert PATTERN <= kept, kept
    bastion = [rule for rule in proposal["rules"] if rule["from"] == {"cidr": [BASTION]}]
    assert [rule["ports"] for rule in bastion] == [["tcp/22"]], yaml.safe_dump(proposal)
    assert bastion[0]["name"].startswith("net-10-213-240-1-to-"), bastion
    assert any(rule["from"] == {"tags": {"role": "monitoring"}} and rule["ports"] == ["tcp/9100"]
               for rule in proposal["rules"]), proposal
    noise = [e["flow"] for e in data["left_out"]["below_threshold"]["examples"]]
    assert "%s -> app-01 tcp/8080" % NOISE in noise, noise
    assert "<svg" in svg and "role=web" in svg and "role=monitoring" in svg
    for name in MANAGED:    # the collection removed itself: no unit, no timer, no file
        assert not host(name).file("/run/mseg-discover").exists
        assert host(name).run("systemctl is-active " + DISCOVER_UNITS).stdout.split() == ["inactive"] * 3
    try:
        playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed", "mseg_policy": proposal,
                                            "mseg_health_probes": []}))
        measured, _predicted = agreement(mseg_policy=proposal, reachability_ports=PORTS + ["tcp/9100"])
        wrong = sorted((src, dst, family, port, is_open) for (src, dst, family, port), is_open in measured.items()
                       if dst in MANAGED and src != dst and is_open != ((src, dst, port) in PATTERN))
        assert wrong == [], wrong
        # the operator is not locked out: a fresh SSH session (no shared master connection) from the bastion
        fresh = subprocess.run(["ansible", "managed", "-i", INVENTORY, "-m", "ansible.builtin.ping"], cwd=ROOT,
                               env=dict(ENV, ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPath=none"),
                               capture_output=True, text=True, timeout=120, check=False)
        assert fresh.returncode == 0 and fresh.stdout.count("SUCCESS") == len(MANAGED), fresh.stdout + fresh.stderr
        # the noise stays closed
        noisy = host("out-01").run("python3 -c 'import socket; socket.create_connection((\"%s\", 8080), 3, "
                                   "(\"%s\", 0))'" % (ADDRESS["app-01"], NOISE))
        assert noisy.rc != 0 and "timed out" in noisy.stderr, (noisy.rc, noisy.stderr)
    finally:
        start_db_listener()    # reachability stopped the listeners; the inventory's health probe needs db's
        playbook("mseg.fleet.rollout", *ev({"mseg_hosts": "managed"}))


SANDBOXED = ("CapabilityBoundingSet=cap_net_admin", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
             "PrivateTmp=yes", "PrivateDevices=yes", "ReadWritePaths=/run/mseg-discover",
             "RestrictAddressFamilies=AF_NETLINK", "MemoryDenyWriteExecute=yes")


def test_an_interrupted_discover_removes_its_collector_and_changes_no_ruleset():
    """ansible-playbook killed in the window: each host's own timer removes the collector and its files after the
    window and the grace; no ruleset changed. While it runs, the collector's unit shows its sandbox."""
    before = listings()
    with tempfile.TemporaryDirectory() as scratch:
        log = os.path.join(scratch, "discover.log")
        with open(log, "w", encoding="utf-8") as output:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                ["ansible-playbook", "-i", INVENTORY, "mseg.fleet.discover",
                 *ev({"mseg_hosts": "managed", "mseg_discover_duration": "6s", "mseg_discover_interval": 1,
                      "mseg_discover_grace": 2, "mseg_discover_dir": os.path.join(scratch, "report")})],
                cwd=ROOT, env=ENV, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            with open(log, encoding="utf-8") as output:
                while "TASK [Wait for the window to end]" not in output.read() and time.monotonic() < deadline:
                    assert proc.poll() is None, "discover ended before its window"
                    time.sleep(0.2)
                    output.seek(0)
            shown = host("web-01").check_output("systemctl show -p %s mseg-discover.service"
                                                % " -p ".join(item.split("=", maxsplit=1)[0] for item in SANDBOXED))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert sorted(shown.splitlines()) == sorted(SANDBOXED), shown
    time.sleep(8)    # the window (6 s, begun before the kill) and the grace (2 s)
    for name in MANAGED:
        node = host(name)
        deadline = time.monotonic() + 15
        while node.file("/run/mseg-discover").exists and time.monotonic() < deadline:
            time.sleep(1)
        assert not node.file("/run/mseg-discover").exists, name
        assert node.run("systemctl is-active " + DISCOVER_UNITS).stdout.split() == ["inactive"] * 3, name
    assert listings() == before
