"""The policy proven by packets: rendered rulesets loaded into network namespaces, real TCP and UDP connections
between them, and trace's verdict compared with what the packets did on every pair, port and address family."""

import glob
import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                ".build", "collections"))

from netns import CONNECTED, Fleet, available  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import trace  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

NAMES = ["web", "app", "db", "ext"]
MANAGED = ["web", "app", "db"]
PORTS = [("tcp", 80), ("tcp", 443), ("tcp", 5432), ("tcp", 8080), ("tcp", 22), ("udp", 5353)]
GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit", "fixtures", "golden")


def policy(ext4, ext6):
    return {
        "defaults": {"ingress": "deny", "egress": "deny"},
        "rules": [
            {"id": 10, "name": "web-to-app", "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "app"}},
             "ports": ["tcp/8080", "udp/5353"]},
            {"id": 20, "name": "app-to-db", "from": {"tags": {"role": "app"}}, "to": {"tags": {"role": "db"}},
             "ports": ["tcp/5400-5500"]},
            {"id": 30, "name": "ext-not-to-db", "from": {"cidr": [ext4, ext6]}, "to": {"tags": {"role": "db"}},
             "action": "deny"},
            {"id": 31, "name": "everyone-to-db", "from": {"any": True}, "to": {"tags": {"role": "db"}},
             "ports": ["tcp/5432"]},
            {"id": 40, "name": "audit-db", "from": {"any": True}, "to": {"tags": {"role": "db"}},
             "ports": ["tcp/5432"], "action": "log"},
            {"id": 50, "name": "ext-to-web", "from": {"cidr": [ext4]}, "to": {"tags": {"role": "web"}},
             "ports": ["tcp/443"]},
            {"id": 60, "name": "web-out-80", "from": {"tags": {"role": "web"}}, "to": {"cidr": [ext4, ext6]},
             "ports": ["tcp/80"]},
            {"id": 70, "name": "no-web-to-db", "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "db"}},
             "action": "deny", "ports": ["tcp/5432"]},
        ],
    }


def compile_for(fleet, modes):
    hosts = {}
    for name in MANAGED:
        hosts[name] = {"tags": {"role": name}, "groups": [name], "mode": modes[name],
                       "addresses": [fleet.addr(name), fleet.addr6(name)]}
    return compile_fleet(policy(fleet.addr("ext"), fleet.addr6("ext")), hosts)


def load(fleet, compiled):
    for name in MANAGED:
        text, _stats = render_plan(compiled.plans[name])
        fleet.run(name, ["nft", "-f", "-"], input=text)


def measure(fleet, flows, timeout=0.6):
    """Probe every flow in parallel against listeners started beforehand; returns {flow: connected}."""
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = pool.map(lambda f: fleet.probe(f[0], f[1], f[3], proto=f[2], family=f[4], timeout=timeout,
                                                  listen=False), flows)
        return {flow: outcome == CONNECTED for flow, outcome in zip(flows, outcomes)}


def all_flows():
    return [(src, dst, proto, port, family) for src in NAMES for dst in NAMES if src != dst
            for proto, port in PORTS for family in (4, 6)]


def predicted(fleet, compiled, flow):
    src, dst, proto, port, family = flow
    address = fleet.addr if family == 4 else fleet.addr6

    def endpoint(name):
        return name if name in MANAGED else address(name)

    results = [r for r in trace(compiled, endpoint(src), endpoint(dst), "%s/%d" % (proto, port))
               if r.family == family]
    if not results:  # neither end managed: no policy applies
        return True
    return results[0].allowed


@pytest.fixture(name="fleet", scope="module")
def fixture_fleet():
    with Fleet(NAMES) as fleet:
        for name in NAMES:
            for proto, port in PORTS:
                fleet.listen(name, port, proto)
        yield fleet


def test_enforce_matches_trace_on_every_pair(fleet):
    compiled = compile_for(fleet, {name: "enforce" for name in MANAGED})
    load(fleet, compiled)
    flows = all_flows()
    measured = measure(fleet, flows)
    disagreements = [(flow, measured[flow]) for flow in flows if measured[flow] != predicted(fleet, compiled, flow)]
    assert disagreements == []
    # and the policy does what it says, spelled out for the flows that matter
    assert measured[("web", "app", "tcp", 8080, 4)] and measured[("web", "app", "udp", 5353, 6)]
    assert not measured[("web", "app", "tcp", 22, 4)]
    assert measured[("app", "db", "tcp", 5432, 4)] and measured[("app", "db", "tcp", 5432, 6)]
    assert not measured[("web", "db", "tcp", 5432, 4)]     # deny 70 beats allow 31
    assert not measured[("ext", "db", "tcp", 5432, 6)]     # deny 30 beats allow 31
    assert measured[("ext", "web", "tcp", 443, 4)] and not measured[("ext", "web", "tcp", 443, 6)]
    assert measured[("web", "ext", "tcp", 80, 4)]          # egress deny, opened by rule 60
    assert not measured[("app", "ext", "tcp", 80, 4)]      # egress default deny
    assert not measured[("db", "app", "tcp", 8080, 4)]


def test_drops_are_counted_per_rule(fleet):
    compiled = compile_for(fleet, {name: "enforce" for name in MANAGED})
    load(fleet, compiled)
    assert not fleet.tcp_connect("web", "db", 5432, timeout=0.5, listen=False)
    # the sender's egress drops it first (the rule governs both ends), so db never sees the packet
    sender = fleet.run("web", ["nft", "list", "counter", "inet", "mseg", "rule_70_out"]).stdout
    receiver = fleet.run("db", ["nft", "list", "counter", "inet", "mseg", "rule_70_in"]).stdout
    assert re.search(r"packets [1-9]", sender), sender
    assert "packets 0 " in receiver, receiver


def _kernel_log_since(marker):
    """Kernel log lines after our marker (the ring buffer may drop old lines, so no line counting)."""
    lines = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()
    for index, line in enumerate(lines):
        if marker in line:
            return lines[index + 1:]
    raise AssertionError("the kernel log lost the marker %s; it wrapped during the test" % marker)


def test_observe_passes_everything_and_audits_exactly_what_enforce_drops(fleet):
    enforce = compile_for(fleet, {name: "enforce" for name in MANAGED})
    observe = compile_for(fleet, {name: "observe" for name in MANAGED})
    load(fleet, observe)
    flows = [f for f in all_flows() if f[4] == 4 and f[2] == "tcp" and f[3] in (5432, 8080)]
    with open("/proc/sys/net/netfilter/nf_log_all_netns") as handle:
        saved = handle.read().strip()
    with open("/proc/sys/net/netfilter/nf_log_all_netns", "w") as handle:
        handle.write("1")
    marker = "mseg-integration-observe-%s" % uuid.uuid4().hex
    try:
        with open("/dev/kmsg", "w", encoding="ascii") as kmsg:
            kmsg.write(marker + "\n")
        measured = {}
        for flow in flows:  # one at a time, well inside the log rate limit
            measured.update(measure(fleet, [flow]))
        log = _kernel_log_since(marker)
    finally:
        with open("/proc/sys/net/netfilter/nf_log_all_netns", "w") as handle:
            handle.write(saved)
    assert all(measured.values()), [f for f, ok in measured.items() if not ok]
    addr = {fleet.addr(n): n for n in NAMES}
    audited = set()
    for line in log:
        match = re.search(r"\[MSEG-AUDIT\] ID=\d+ .*SRC=(\S+) DST=(\S+) .*PROTO=TCP .*DPT=(\d+)", line)
        if match and match.group(1) in addr and match.group(2) in addr:
            audited.add((addr[match.group(1)], addr[match.group(2)], "tcp", int(match.group(3)), 4))
    would_drop = {f for f in flows if not predicted(fleet, enforce, f)}
    assert would_drop and audited == would_drop


def test_bypass_passes_everything(fleet):
    compiled = compile_for(fleet, {name: "bypass" for name in MANAGED})
    load(fleet, compiled)
    measured = measure(fleet, all_flows())
    assert all(measured.values()), [f for f, ok in measured.items() if not ok]
    listing = fleet.run("db", ["nft", "list", "table", "inet", "mseg"]).stdout
    assert "counter mode_bypass" in listing


def test_golden_rulesets_load_in_the_kernel():
    paths = sorted(glob.glob(os.path.join(GOLDEN, "*.nft")))
    assert paths
    with Fleet(["check"], ipv6=False) as fleet:
        for path in paths:
            with open(path, encoding="utf-8") as handle:
                fleet.run("check", ["nft", "-f", "-"], input=handle.read())


def test_rulesets_load_on_a_host_without_etc_protocols():
    """Minimal hosts (containers, the lab) have no /etc/protocols; nft must not need it to load our rulesets."""
    hosts = {"a": {"tags": {"role": "a"}, "addresses": ["10.9.0.1", "fd00:9::1"], "mode": "enforce"}}
    policy = {"rules": [{"id": 1, "from": {"any": True}, "to": {"tags": {"role": "a"}},
                         "ports": ["icmp", "tcp", "udp", "tcp/22"]}]}
    text, _stats = render_plan(compile_fleet(policy, hosts).plans["a"])
    with Fleet(["bare"], ipv6=False) as fleet:
        hidden = ["unshare", "--mount", "sh", "-c", 'mount --bind /dev/null /etc/protocols && exec "$@"', "sh"]
        proc = subprocess.run(hidden + fleet.exec_prefix("bare") + ["nft", "-f", "-"], input=text,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        check = subprocess.run(hidden + ["getent", "protocols", "tcp"], capture_output=True, text=True, check=False)
        assert check.returncode != 0  # the test really hid the file
