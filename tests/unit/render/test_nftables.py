"""Rendering: golden files, the nftables contract, and determinism."""

import os
import random
import re

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import build_table, render_plan
from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "golden")
HOSTS = ["app-01", "db-01", "legacy-01", "web-01", "web-02"]


@pytest.fixture(name="rendered", scope="module")
def fixture_rendered(load_fleet):
    data = load_fleet()
    fleet = compile_fleet(data["policy"], data["hosts"])
    return {name: render_plan(fleet.plans[name])[0] for name in HOSTS}


@pytest.mark.parametrize("host", HOSTS)
def test_rendering_matches_golden_file(rendered, host):
    path = os.path.join(GOLDEN, "%s.nft" % host)
    if os.environ.get("MSEG_UPDATE_GOLDEN") == "1":
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(rendered[host])
    with open(path, encoding="utf-8") as handle:
        assert rendered[host] == handle.read()


@pytest.mark.parametrize("host", HOSTS)
def test_only_table_inet_mseg_is_touched(rendered, host):
    top_level = [line for line in rendered[host].splitlines() if line and not line.startswith(("\t", "#", "}"))]
    assert top_level == ["table inet mseg {}", "delete table inet mseg", "table inet mseg {"]
    assert "flush" not in rendered[host]


def test_a_rate_limit_never_shares_a_rule_with_a_drop(rendered):
    for host in HOSTS:
        for line in rendered[host].splitlines():
            if "limit rate" in line:
                assert not re.search(r"\b(drop|accept|jump)\b", line), line
            if re.search(r"\bdrop\b", line):
                assert "limit" not in line and "log" not in line, line


def test_deny_rule_logs_then_drops_unconditionally(rendered):
    text = rendered["app-01"]
    chain = text[text.index("chain deny_30_in {"):]
    chain = chain[:chain.index("\n\t}")]
    assert chain.splitlines()[1:] == [
        '\t\tlimit rate 10/second burst 20 packets log prefix "[MSEG-DROP] ID=30 " log group 2710 prefix "[MSEG-DROP] ID=30 " comment "ID=30"',
        '\t\tcounter name "rule_30_in" drop comment "ID=30"',
    ]
    assert '\t\tip saddr @r30_in_v4 jump deny_30_in comment "ID=30"' in text


def test_observe_mode_never_drops_and_audits_instead(rendered):
    text = rendered["web-02"]
    assert not re.search(r"\bdrop\b", text)
    assert '[MSEG-AUDIT] ID=0 ' in text and '[MSEG-AUDIT] ID=30 ' in text
    assert '[MSEG-DROP]' not in text


def test_bypass_accepts_everything_and_is_marked(rendered):
    text = rendered["legacy-01"]
    assert "counter mode_bypass {" in text
    body = text[text.index("chain input {"):]
    rules = [line.strip() for line in body.splitlines() if line.startswith("\t\t") and " hook " not in line]
    assert rules == ['counter name "mode_bypass" accept comment "mode=bypass"'] * 2
    assert "emergency_bypass" not in text  # an inventory bypass is lifted by changing the inventory


def test_the_emergency_bypass_carries_its_own_marker_too():
    text = bypass_ruleset("web-01")
    assert text.startswith("# mseg.fleet ruleset for web-01: mode=bypass (emergency, no policy)\n")
    assert "counter emergency_bypass {" in text and "counter mode_bypass {" in text
    assert "set mgmt_auto_v4 {" in text and "set mgmt_auto_v6 {" in text
    body = text[text.index("chain input {"):]
    rules = [line.strip() for line in body.splitlines() if line.startswith("\t\t") and " hook " not in line]
    assert rules == ['counter name "mode_bypass" counter name "emergency_bypass" accept '
                     'comment "mode=bypass (emergency)"'] * 2


def test_enforce_evaluation_order(rendered):
    chain = rendered["db-01"]
    chain = chain[chain.index("chain input {"):chain.index("chain output {")]
    order = [
        "ct state established,related accept",
        "ct state invalid counter name \"invalid_in\" drop",
        "iif \"lo\" accept",
        "icmpv6 type {",
        "@mgmt_auto_v4",
        "@mgmt_0_v4",
        "[MSEG-LOG] ID=40 ",
        "jump deny_30_in",
        "rule_20_in\" accept",
        "[MSEG-DROP] ID=0 ",
        "counter name \"default_in\" drop",
    ]
    positions = [chain.index(marker) for marker in order]
    assert positions == sorted(positions)


def test_rendering_is_deterministic_whatever_the_input_order(load_fleet):
    data = load_fleet()
    first = compile_fleet(data["policy"], data["hosts"])
    shuffled_hosts = list(data["hosts"].items())
    random.Random(7).shuffle(shuffled_hosts)
    rules = list(data["policy"]["rules"])
    random.Random(7).shuffle(rules)
    second = compile_fleet(dict(data["policy"], rules=rules), dict(shuffled_hosts))
    for name in HOSTS:
        assert render_plan(first.plans[name])[0] == render_plan(second.plans[name])[0]


def test_an_address_set_shared_by_hosts_is_formatted_once(load_fleet):
    data = load_fleet()
    fleet = compile_fleet(data["policy"], data["hosts"])
    db, legacy = fleet.plans["db-01"], fleet.plans["legacy-01"]._replace(mode="enforce")
    first, second = build_table(db).sets["r20_in_v4"], build_table(legacy).sets["r20_in_v4"]
    assert first.elements is second.elements and first.elements.items == ("10.0.2.1",)


def _allow_rules_fleet(rules):
    hosts = {"db": {"tags": {"role": "db"}, "addresses": ["10.9.0.1", "fd00:9::1"], "mode": "enforce"}}
    policy = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": rules}
    return render_plan(compile_fleet(policy, hosts).plans["db"])[0]


def _input_rules(text):
    chain = text[text.index("chain input {"):text.index("chain output {")]
    return [line.strip() for line in chain.splitlines()[2:] if line.startswith("\t\t")]


def test_consecutive_allow_rules_with_the_same_ports_are_one_map_lookup():
    to = {"tags": {"role": "db"}}
    text = _allow_rules_fleet([
        {"id": 1, "from": {"cidr": ["10.1.0.0/24", "fd00:1::/64"]}, "to": to, "ports": ["tcp/5432"]},
        {"id": 2, "from": {"cidr": ["10.1.0.7", "10.2.0.0/23"]}, "to": to, "ports": ["tcp/5432"]},
        {"id": 3, "from": {"cidr": ["10.0.0.0/8"]}, "to": to, "ports": ["tcp/5432"]},
        {"id": 4, "from": {"cidr": ["10.3.0.1"]}, "to": to, "ports": ["tcp/80", "udp/53"]},
        {"id": 5, "from": {"cidr": ["10.4.0.1"]}, "to": to, "ports": ["tcp/80", "udp/53"]},
    ])
    rules = _input_rules(text)
    assert rules[6:] == [
        'tcp dport 5432 ip saddr vmap @allow_1_in_v4 comment "ID=1,2,3"',
        'tcp dport 5432 ip6 saddr vmap @allow_1_in_v6 comment "ID=1,2,3"',
        'tcp dport 80 ip saddr vmap @allow_4_in_v4 comment "ID=4,5"',
        'udp dport 53 ip saddr vmap @allow_4_in_v4 comment "ID=4,5"',
        'limit rate 10/second burst 20 packets log prefix "[MSEG-DROP] ID=0 " log group 2710 prefix "[MSEG-DROP] ID=0 " comment "ID=0"',
        'counter name "default_in" drop comment "ID=0"',
    ]
    # Each address goes to the first rule that names it: rule 2 keeps nothing of 10.1.0.0/24, rule 3 only the rest.
    elements = re.search(r"map allow_1_in_v4 \{\n\t\ttype ipv4_addr : verdict\n\t\tflags interval\n"
                         r"\t\telements = \{ (.*?) \}\n", text, re.S).group(1)
    mapping = [tuple(e.strip().split(" : jump ")) for e in elements.replace("\n", " ").split(",")]
    assert ("10.1.0.0/24", "allow_1_in") in mapping and ("10.2.0.0/23", "allow_2_in") in mapping
    assert all(not (net.startswith("10.1.0.") and chain != "allow_1_in") for net, chain in mapping)
    assert ("10.0.0.0/16", "allow_3_in") in mapping and ("10.128.0.0/9", "allow_3_in") in mapping
    assert len({net for net, _chain in mapping}) == len(mapping)
    for rule_id in (1, 2, 3):
        assert ('chain allow_%d_in {\n\t\tcounter name "rule_%d_in" accept comment "ID=%d"\n\t}'
                % (rule_id, rule_id, rule_id)) in text


def test_a_single_allow_rule_and_other_actions_keep_their_own_rules():
    to = {"tags": {"role": "db"}}
    text = _allow_rules_fleet([
        {"id": 1, "from": {"cidr": ["10.1.0.0/24"]}, "to": to, "ports": ["tcp/5432"], "action": "deny"},
        {"id": 2, "from": {"cidr": ["10.2.0.0/24"]}, "to": to, "ports": ["tcp/5432"], "action": "deny"},
        {"id": 3, "from": {"cidr": ["10.3.0.0/24"]}, "to": to, "ports": ["tcp/5432"]},
        {"id": 4, "from": {"any": True}, "to": to, "ports": ["tcp/5432"]},
    ])
    assert "vmap" not in text and "map allow" not in text
    assert 'tcp dport 5432 ip saddr @r3_in_v4 counter name "rule_3_in" accept comment "ID=3"' in _input_rules(text)
