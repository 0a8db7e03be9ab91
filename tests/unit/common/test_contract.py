"""The wire contract ties each writer to each reader: rendered rulesets against the log parser, the agent's drop
log, the observe report, the counter readers and the policy role; and the allowlist of what a ruleset may write."""

import ipaddress
import os
import re
import struct

import pytest
import yaml

from ansible_collections.mseg.fleet.plugins.filter.wire import wire
from ansible_collections.mseg.fleet.plugins.module_utils.agent.droplog import droplog_line, parse_runtime_line
from ansible_collections.mseg.fleet.plugins.module_utils.agent.nflog import Record, record_event
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import parse_line
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet
from ansible_collections.mseg.fleet.plugins.module_utils.compile.observe import summarise
from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan
from ansible_collections.mseg.fleet.plugins.modules.nft_counters import report
from ansible_collections.mseg.fleet.tests.unit.nft.samples import json_form

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
OUTSIDE = "192.0.2.7"
HOSTS = {
    "web-1": {"tags": {"role": "web"}, "addresses": ["10.0.1.1", "fd00:1::1"], "mode": "enforce"},
    "db-1": {"tags": {"role": "db"}, "addresses": ["10.0.2.1", "fd00:2::1"], "mode": "enforce",
             "management": [{"cidr": "10.9.0.0/24", "ports": ["tcp/22"]}]},
    "db-2": {"tags": {"role": "db"}, "addresses": ["10.0.2.2"], "mode": "observe"},
    "db-3": {"tags": {"role": "db"}, "addresses": ["10.0.2.3"], "mode": "bypass"},
}
POLICY = {
    "defaults": {"ingress": "deny", "egress": "deny"},
    "rules": [
        {"id": 10, "name": "web-to-db", "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "db"}},
         "ports": ["tcp/5432"]},
        {"id": 11, "from": {"cidr": ["10.7.0.0/16"]}, "to": {"tags": {"role": "db"}}, "ports": ["tcp/5432"]},
        {"id": 30, "name": "no-outside", "from": {"cidr": ["192.0.2.0/24"]}, "to": {"tags": {"role": "db"}},
         "action": "deny"},
        {"id": 40, "name": "watch-ssh", "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "db"}},
         "ports": ["tcp/22"], "action": "log"},
        {"id": 50, "from": {"tags": {"role": "db"}}, "to": {"cidr": ["198.51.100.0/24"]}, "action": "deny"},
    ],
}
DIRECTION_OF_CHAIN = {"input": "ingress", "output": "egress"}


@pytest.fixture(name="fleet", scope="module")
def fixture_fleet():
    return compile_fleet(POLICY, HOSTS)


@pytest.fixture(name="rulesets", scope="module")
def fixture_rulesets(fleet):
    """The tables every writer produces: enforce, observe, an inventory's bypass, the emergency bypass."""
    return {
        "enforce": render_plan(fleet.plans["db-1"])[0],
        "observe": render_plan(fleet.plans["db-2"])[0],
        "bypass": render_plan(fleet.plans["db-3"])[0],
        "emergency": bypass_ruleset("db-1"),
    }


def chains(text):
    """``{chain: [rule lines]}`` of a rendered table."""
    found = {}
    current = None
    for line in text.splitlines():
        opened = re.match(r"^\tchain (\S+) \{$", line)
        if opened:
            current = found.setdefault(opened.group(1), [])
        elif line == "\t}":
            current = None
        elif current is not None and line.startswith("\t\t") and " hook " not in line:
            current.append(line.strip())
    return found


def direction_of(chain):
    return DIRECTION_OF_CHAIN.get(chain) or {"in": "ingress", "out": "egress"}[chain.rsplit("_", 1)[1]]


def log_prefixes(text):
    """``[(chain, prefix)]`` for every log statement of a rendered table."""
    return [(chain, prefix) for chain, rules in chains(text).items() for rule in rules
            for prefix in re.findall(r'\blog prefix "([^"]*)"', rule)]


def nflog_statements(text):
    """``[(chain, group, prefix)]`` for every NFLOG log statement of a rendered table."""
    return [(chain, int(group), prefix) for chain, rules in chains(text).items() for rule in rules
            for group, prefix in re.findall(r'\blog group (\d+) prefix "([^"]*)"', rule)]


def ipv4_tcp(src, dst, dport):
    """An IPv4 header and the first bytes of a TCP header, as an NFLOG record carries the packet."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, ipaddress.ip_address(src).packed,
                         ipaddress.ip_address(dst).packed)
    return header + struct.pack("!HHII", 40000, dport, 0, 0)


def runtime_line(message, at="2026-12-05T10:00:00Z"):
    return "%s INFO %s" % (at, message)


def declared(text, keyword):
    return re.findall(r"^\t%s (\S+) \{$" % keyword, text, re.M)


def kernel_line(prefix, direction, src="192.0.2.7", dst="10.0.2.1"):
    """A kernel log line as the kernel prints it for a logged packet (its own ID= field is the IP id)."""
    iif, oif = ("eth0", "") if direction == "ingress" else ("", "eth0")
    return ("[ 4711.000001] %sIN=%s OUT=%s MAC=52:54:00:12:34:56:52:54:00:65:43:21:08:00 SRC=%s DST=%s LEN=60 "
            "TOS=0x00 PREC=0x00 TTL=64 ID=54321 DF PROTO=TCP SPT=40000 DPT=5432 WINDOW=64240 RES=0x00 SYN URGP=0"
            % (prefix, iif, oif, src, dst))


# (a) log prefixes: writer (renderer) -> readers (logline.parse_line for people; for machines the NFLOG reader, the
# agent's drop log and the observe report)

def test_every_log_prefix_is_a_contract_prefix_of_the_right_kind(rulesets):
    kinds = {}
    for mode, text in rulesets.items():
        for _chain, prefix in log_prefixes(text):
            found = contract.LOG_PREFIX_RE.match(prefix)
            assert found, (mode, prefix)
            assert prefix == contract.log_prefix(found.group("kind"), int(found.group("id")))
            kinds.setdefault(mode, set()).add(found.group("kind"))
    assert kinds == {"enforce": {"DROP", "LOG"}, "observe": {"AUDIT", "LOG"}}


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_each_logged_line_is_read_back_by_the_parser_and_the_drop_log(rulesets, mode):
    seen = set()
    for chain, prefix in log_prefixes(rulesets[mode]):
        kind, rule_id = contract.LOG_PREFIX_RE.match(prefix).group("kind", "id")
        direction = direction_of(chain)
        line = kernel_line(prefix, direction)
        event = parse_line(line)
        assert (event.kind, event.rule, event.direction) == (kind, int(rule_id), direction), line
        assert (event.src, event.dst, event.proto, event.dport) == ("192.0.2.7", "10.0.2.1", "tcp", 5432)
        seen.add((kind, int(rule_id), direction))
    # the deny rules, the log rule and both defaults all log, in the mode's kind
    verdict = "DROP" if mode == "enforce" else "AUDIT"
    assert {(verdict, 30, "ingress"), (verdict, 0, "ingress"), (verdict, 0, "egress"), ("LOG", 40, "ingress"),
            (verdict, 50, "egress")} <= seen


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_every_log_line_has_its_nflog_record_read_back_by_the_drop_log(rulesets, mode):
    """Each log statement for people has a twin to its kind's NFLOG group with the same prefix; a record of that
    group and prefix is an event for the drop log, whose runtime line parses back to the same event."""
    people = sorted(log_prefixes(rulesets[mode]))
    machines = nflog_statements(rulesets[mode])
    assert sorted((chain, prefix) for chain, _group, prefix in machines) == people
    for chain, group, prefix in machines:
        kind, rule_id = contract.LOG_PREFIX_RE.match(prefix).group("kind", "id")
        assert group == contract.NFLOG_GROUP[kind]
        direction = direction_of(chain)
        indev, outdev = (2, 0) if direction == "ingress" else (0, 2)
        event = record_event(Record(group, prefix.encode("ascii"), indev, outdev,
                                    ipv4_tcp("192.0.2.7", "10.0.2.1", 5432)))
        assert event == (kind, int(rule_id), direction, "192.0.2.7", "10.0.2.1", "tcp", 5432)
        word = {"DROP": "Drop", "AUDIT": "Audit", "LOG": "Log"}[kind]
        assert droplog_line(event) == "Policy %s: ID=%s src=192.0.2.7 dst=10.0.2.1 proto=tcp dport=5432 dir=%s" % (
            word, rule_id, direction)
        assert parse_runtime_line(runtime_line(droplog_line(event))) == ("2026-12-05T10:00:00Z", event)


def test_the_observe_report_counts_each_audited_rule(fleet, rulesets):
    lines = [runtime_line(droplog_line(record_event(Record(group, prefix.encode("ascii"), 2, 0, ipv4_tcp(
        "192.0.2.7", "10.0.2.1", 5432))))) for _chain, group, prefix in nflog_statements(rulesets["observe"])]
    audited = {int(contract.LOG_PREFIX_RE.match(p).group("id")) for _c, p in log_prefixes(rulesets["observe"])
               if p.startswith(contract.LOG_TAG["AUDIT"])}
    summary = summarise(fleet, lines)
    assert {rule["rule"] for rule in summary["rules"]} == audited == {0, 30, 50}


# (b) counters: writer -> contract.NAMES, parse_rule_counter, nft_counters

def test_every_counter_is_a_contract_name_and_rule_counters_name_their_rule(fleet, rulesets):
    for mode, text in rulesets.items():
        counters = declared(text, "counter")
        assert counters, mode
        assert [c for c in counters if not contract.NAMES["counter"].match(c)] == []
        assert set(re.findall(r'counter name "([^"]+)"', text)) == set(counters)
    counters = declared(rulesets["enforce"], "counter")
    parsed = {contract.parse_rule_counter(c) for c in counters} - {None}
    plan = fleet.plans["db-1"]
    assert parsed == {(item.id, direction) for direction in contract.DIRECTIONS for item in plan.rules(direction)}
    assert parsed >= {(10, "ingress"), (30, "ingress"), (40, "ingress"), (50, "egress")}
    others = {c for c in counters if contract.parse_rule_counter(c) is None}
    assert others == {contract.MGMT_COUNTER} | {f(d) for d in contract.DIRECTIONS
                                                for f in (contract.default_counter, contract.invalid_counter)}


def test_the_counter_direction_reader_agrees_with_the_writer(rulesets):
    for name in declared(rulesets["enforce"], "counter"):
        parsed = contract.parse_rule_counter(name)
        if parsed:
            assert contract.counter_direction(name) == parsed[1]


# (c) bypass markers: writer (bypass tables) -> nft_counters -> the policy role

def listed(text):
    """What Nft.counters() returns for a freshly loaded table: its declared counters, at zero."""
    return [(name, 0, 0) for name in sorted(declared(text, "counter"))]


def test_nft_counters_tells_the_tables_apart_by_their_markers(rulesets):
    results = {mode: report(listed(text)) for mode, text in rulesets.items()}
    assert {mode: (r["bypass"], r["emergency_bypass"]) for mode, r in results.items()} == {
        "enforce": (False, False), "observe": (False, False), "bypass": (True, False), "emergency": (True, True)}
    assert results["emergency"]["markers"] == sorted([wire("BYPASS_MARKER"), wire("EMERGENCY_MARKER")])
    assert report(None) == {"changed": False, "table_present": False, "counters": {}, "markers": [],
                            "bypass": False, "emergency_bypass": False}


def test_the_policy_role_keeps_the_emergency_bypass_by_what_nft_counters_reports(rulesets):
    path = os.path.join(ROOT, "roles", "policy", "tasks", "main.yml")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    tasks = yaml.safe_load(text)
    reader = [t for t in tasks if "mseg.fleet.nft_counters" in t]
    assert len(reader) == 1
    keep = [t for t in tasks if "ansible.builtin.fail" in t and any(
        "%s.emergency_bypass" % reader[0]["register"] in str(c) for c in t["when"])]
    assert len(keep) == 1 and "EMERGENCY_MARKER' | mseg.fleet.wire" in keep[0]["ansible.builtin.fail"]["msg"]
    assert report(listed(rulesets["emergency"]))["emergency_bypass"] is True
    # the role names no marker and runs no nft itself: comments and the module's result key aside, the markers'
    # values appear nowhere in it
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    code = code.replace("%s.emergency_bypass" % reader[0]["register"], "")
    assert not [m for m in contract.MARKERS if m in code] and not re.search(r"\bnft\b", code)


# (d) chain and set names, and the allowlist (reservations of marks and log channels)

def test_every_rendered_ruleset_keeps_to_the_contract(rulesets):
    for mode, text in rulesets.items():
        assert contract.check_ruleset(json_form(text)) == [], mode
        assert declared(text, "chain") and all(contract.NAMES["chain"].match(c) for c in declared(text, "chain"))
        names = declared(text, "set") + declared(text, "map")
        assert names and all(contract.NAMES["set"].match(n) for n in names)
    assert declared(rulesets["enforce"], "map") == [contract.allow_map(10, "ingress", v) for v in (4, 6)]


@pytest.mark.parametrize("line, problem", [
    ("meta mark set 0x00000400 accept", "writes meta mark outside the bits"),
    ("mark set 0x1", "writes meta mark outside the bits"),
    ("meta mark set meta mark & 0xffff0000 | 0x00010000", "writes meta mark outside the bits"),
    ("meta mark set meta mark & 0xff000000 | 0x00000400", "writes meta mark outside the bits"),
    ("ct mark set 42", "writes ct mark outside the bits"),
    ("ct mark set meta mark", "writes ct mark outside the bits"),
    ("ct mark set ct mark & 0xfff00000 | 0x00000005", "writes ct mark outside the bits"),
    ("meta priority set 1", "writes {'meta': {'key': 'priority'}}, which is not a mark the contract assigns"),
    ('log group 5 prefix "[MSEG-DROP] ID=30 "', "to NFLOG group 5; the contract assigns group 2710"),
    ('log prefix "[MSEG-DROP] ID=30 " group 2711', "to NFLOG group 2711; the contract assigns group 2710"),
    ('log prefix "dropped: " drop', 'logs with prefix "dropped: ", not one of the contract\'s'),
    ('log prefix "[MSEG-DROP] ID=70000 "', "not one of the contract's"),
    ("limit rate 10/second log", "logs with prefix (none)"),
    ("meta l4proto tcp notrack", "statement notrack is not allowed"),
])
def test_the_allowlist_rejects_marks_statements_and_log_channels_outside_the_contract(rulesets, line, problem):
    text = rulesets["enforce"]
    at = text.index("\t\tct state established,related accept\n")
    tampered = text[:at] + "\t\t" + line + "\n" + text[at:]
    problems = contract.check_ruleset(json_form(tampered))
    assert len(problems) == 1 and problem in problems[0], problems
    assert problems[0].startswith("a rule in chain input: ")


@pytest.mark.parametrize("chain, problem", [
    ("chain input {\n type nat hook prerouting priority dstnat;\n dnat ip to 10.0.0.1\n }",
     "chain input is a nat chain on hook prerouting"),
    ("chain output {\n type route hook output priority mangle;\n }", "chain output is a route chain on hook output"),
])
def test_the_allowlist_rejects_nat_and_route_chains(chain, problem):
    problems = contract.check_ruleset(json_form("table inet mseg {\n %s\n}\n" % chain))
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("line", [
    "meta mark set meta mark & 0xffff0000 | 0x00000400",
    "mark set mark and 0xffff0000 or 0x0000ffff",
    "ct mark set ct mark & 0xfffe0000 | 0x0001001e",
    'log prefix "[MSEG-DROP] ID=30 " group 2710 drop',
    'limit rate 10/second burst 20 packets log prefix "[MSEG-AUDIT] ID=0 " log prefix "[MSEG-AUDIT] ID=0 " '
    'group 2711 comment "log prefix [MSEG-DROP] group 5"',
])
def test_the_allowlist_accepts_what_the_contract_assigns(line):
    assert contract.check_ruleset(json_form("table inet mseg {\n\tchain input {\n\t\t%s\n\t}\n}\n" % line)) == []


def test_the_allowlist_rejects_names_and_tables_outside_the_contract():
    text = ("table inet mseg {\n\tcounter hits {\n\t}\n\tset peers {\n\t\ttype ipv4_addr\n\t}\n\tchain mine {\n\t}\n}\n"
            "table ip nat {\n}\n")
    assert sorted(contract.check_ruleset(json_form(text))) == [
        "chain mine is not a chain name of the contract", "counter hits is not a counter name of the contract",
        "set peers is not a set name of the contract", "table ip nat is outside table inet mseg"]


def test_the_allowlist_judges_objects_not_text():
    assert contract.check_ruleset([{"flowtable": {"family": "inet", "table": "mseg", "name": "ft"}}]) == [
        "a flowtable is not allowed (a ruleset holds only chain, counter, map, rule, set, table)"]
    assert contract.check_ruleset(["flush ruleset"]) == ["'flush ruleset' is not one nftables object"]
    for statement in ("queue", "dup", "fwd", "redirect", "dnat", "snat", "masquerade", "tproxy", "synproxy", "notrack",
                      "reject", "xt"):
        rule = {"rule": {"family": "inet", "table": "mseg", "chain": "input", "expr": [{statement: {}}]}}
        assert contract.check_ruleset([rule]) == ["a rule in chain input: statement %s is not allowed (a rule may "
                                                  "hold %s)" % (statement, ", ".join(contract.RULE_STATEMENTS))]
    set_update = {"rule": {"family": "inet", "table": "mseg", "chain": "input", "expr": [{"set": {}}]}}
    assert contract.check_ruleset([set_update]) == [
        "a rule in chain input: updates a set other than as a connection limit (the one set update allowed is "
        "'add @sys_controller_connlimit_v4 { ip saddr ct count over N }', ip6 saddr for the _v6 set)"]
    assert contract.check_ruleset([{"rule": {"family": "inet", "table": "mseg", "chain": "input",
                                             "expr": [{"mangle": {"key": {"meta": {"key": "mark"}},
                                                                  "value": {"|": [{"&": [{"meta": {"key": "mark"}},
                                                                                         0xFFFF0400]}, 0x400]}}}]}}]) \
        == []


def test_the_reserved_bits_do_not_overlap():
    assert contract.PACKET_MARK_IDENTITY_MASK & contract.PACKET_MARK_RESERVED_MASK == 0
    assert contract.PACKET_MARK_IDENTITY_MASK | contract.PACKET_MARK_RESERVED_MASK == contract.MARK_BITS
    owned = contract.CT_MARK_RULE_MASK | contract.CT_MARK_DECIDED
    assert contract.CT_MARK_RULE_MASK & contract.CT_MARK_DECIDED == 0 and owned == contract.ASSIGNED_MARKS["ct mark"]
    assert owned & contract.CT_MARK_RESERVED_MASK == 0 and owned | contract.CT_MARK_RESERVED_MASK == contract.MARK_BITS
    assert contract.CT_MARK_RULE_MASK >= 65535  # every rule id fits
    assert len(set(contract.NFLOG_GROUP.values())) == len(contract.LOG_KINDS)
    assert all(0 < group < 65536 for group in contract.NFLOG_GROUP.values())


# The one set update a ruleset may hold: a system connection limit (issue 15 item 9). Anything that looks like it
# but writes another set, another key or another state is refused: a set the packet path writes is a set an
# attacker's packets write (a dynamic management set would let any sender add itself).
LIMIT_BASE = ("table inet mseg {\n\tset sys_controller_connlimit_v4 {\n\t\ttype ipv4_addr\n\t\tflags dynamic\n\t}\n"
              "\tset sys_controller_connlimit_v6 {\n\t\ttype ipv6_addr\n\t\tflags dynamic\n\t}\n"
              "\tset mgmt_1_v4 {\n\t\ttype ipv4_addr\n\t\tflags dynamic\n\t}\n"
              "\tchain input {\n\t\t%s\n\t}\n}\n")
LIMIT = "add @sys_controller_connlimit_v4 { ip saddr ct count over 3 }"


@pytest.mark.parametrize("line", [
    "tcp dport { 443, 8443 } ct state new %s counter drop" % LIMIT,
    "tcp dport 443 ct state new add @sys_controller_connlimit_v6 { ip6 saddr ct count over 64 } drop",
    LIMIT,
])
def test_the_allowlist_accepts_the_connection_limit(line):
    assert contract.check_ruleset(json_form(LIMIT_BASE % line)) == []


@pytest.mark.parametrize("line", [
    "tcp dport 443 add @sys_controller_connlimit_v4 { ip daddr ct count over 3 } drop",
    "add @sys_controller_connlimit_v4 { ip saddr }",
    "add @sys_controller_connlimit_v4 { ip saddr ct count 3 } accept",
    "add @sys_controller_connlimit_v4 { ip saddr limit rate 1/second }",
    "add @sys_controller_connlimit_v4 { ip saddr counter }",
    "add @mgmt_1_v4 { ip saddr ct count over 3 }",
    "add @mgmt_1_v4 { ip saddr }",
    "delete @sys_controller_connlimit_v4 { ip saddr }",
])
def test_the_allowlist_refuses_set_updates_that_only_look_like_the_connection_limit(line):
    problems = contract.check_ruleset(json_form(LIMIT_BASE % line))
    assert len(problems) == 1 and problems[0].startswith(
        "a rule in chain input: updates a set other than as a connection limit"), problems


def test_the_allowlist_refuses_an_update_of_the_limit_set_which_nft_itself_would_refuse_to_load():
    rule = {"rule": {"family": "inet", "table": "mseg", "chain": "input", "expr": [{"set": {
        "op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@sys_controller_connlimit_v4",
        "stmt": [{"ct count": {"val": 3, "inv": True}}]}}]}}
    assert contract.check_ruleset([rule]) == [
        "a rule in chain input: updates a set other than as a connection limit (the one set update allowed is "
        "'add @sys_controller_connlimit_v4 { ip saddr ct count over N }', ip6 saddr for the _v6 set)"]
    rule["rule"]["expr"][0]["set"].update(op="add", stmt=[{"ct count": {"val": 0, "inv": True}}])
    assert len(contract.check_ruleset([rule])) == 1
    rule["rule"]["expr"][0]["set"].update(stmt=[{"ct count": {"val": 3, "inv": True}}])
    assert contract.check_ruleset([rule]) == []


@pytest.mark.parametrize("declaration", [
    "set sys_controller_connlimit_v4 {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 1m\n\t}",
    "set sys_controller_connlimit_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}",
    "set sys_controller_connlimit_v4 {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1 }\n\t}",
    "set sys_controller_connlimit_v4 {\n\t\ttype ipv6_addr\n\t}",
    "map sys_controller_connlimit_v4 {\n\t\ttype ipv4_addr : verdict\n\t}",
])
def test_the_allowlist_refuses_a_limit_set_that_is_not_one(declaration):
    problems = contract.check_ruleset(json_form("table inet mseg {\n\t%s\n}\n" % declaration))
    assert any("is not a connection-limit set" in p for p in problems), problems
