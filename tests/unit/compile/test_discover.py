"""Discovery: flow records -> a proposed policy, exactly; the proposal checked by trace; bad input said clearly."""

import copy
import os

import pytest
import yaml

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover import check
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.check import discover
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import (
    parse_settings, read_csv, read_mappings,
)
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "discover")
EXCLUDE_MDNS = {"exclude": [{"ports": ["udp/5353"]}]}

# The lab's pattern: labels explain every flow between labelled hosts (no host lists but for the unlabelled
# legacy-01); 5432 and 5433 merge (consecutive), 8080 and 8443 do not; three addresses of 203.0.113.0/24 become the
# prefix, the lone 192.0.2.50 and 2001:db8::5 stay themselves; monitoring and bastion reach "every labelled host".
EXPECTED = """\
# Proposed by mseg.fleet discovery from 32 records: 25 flows of at least 3 connections, 7 rules.
# Review it, roll it out in observe mode, read the observe report, then enforce (docs/discovery.md).
mseg_policy:
  defaults:
    ingress: deny
    egress: allow
  rules:
    # 2 flows, 127 connections: app-01 -> db-01 tcp/5432 (120), app-02 -> db-01 tcp/5433 (7)
    - id: 1000
      name: app-to-db
      from: {tags: {role: app}}
      to: {tags: {role: db}}
      ports: [tcp/5432-5433]
    # 7 flows, 21 connections: bastion-01 -> app-01 tcp/22 (3), bastion-01 -> app-02 tcp/22 (3), \
bastion-01 -> db-01 tcp/22 (3); and 4 more
    - id: 1010
      name: bastion-to-all-legacy-01
      from: {tags: {role: bastion}}
      to: [{has: [role]}, {hosts: [legacy-01]}]
      ports: [tcp/22]
    # 1 flow, 4 connections: legacy-01 -> db-01 tcp/5432 (4)
    - id: 1020
      name: legacy-01-to-db
      from: {hosts: [legacy-01]}
      to: {tags: {role: db}}
      ports: [tcp/5432]
    # 7 flows, 420 connections: mon-01 -> app-01 tcp/9100 (60), mon-01 -> app-02 tcp/9100 (60), \
mon-01 -> bastion-01 tcp/9100 (60); and 4 more
    - id: 1030
      name: mon-to-all-legacy-01
      from: {tags: {role: mon}}
      to: [{has: [role]}, {hosts: [legacy-01]}]
      ports: [tcp/9100]
    # 1 flow, 30 connections: mon-01 -> db-01 icmp (30)
    - id: 1040
      name: mon-to-db
      from: {tags: {role: mon}}
      to: {tags: {role: db}}
      ports: [icmp]
    # 4 flows, 73 connections: 203.0.113.0/24 -> web-01 tcp/443 (40), 203.0.113.0/24 -> web-02 tcp/443 (20), \
192.0.2.50 -> web-02 tcp/443 (9); and 1 more
    - id: 1050
      name: outside-to-web
      from: {cidr: [192.0.2.50, 203.0.113.0/24, "2001:db8::5"]}
      to: {tags: {role: web}}
      ports: [tcp/443]
    # 3 flows, 80 connections: web-01 -> app-01 tcp/8080 (40), web-02 -> app-02 tcp/8080 (35), \
web-01 -> app-02 tcp/8443 (5)
    - id: 1060
      name: web-to-app
      from: {tags: {role: web}}
      to: {tags: {role: app}}
      ports: [tcp/8080, tcp/8443]
"""


@pytest.fixture(name="hosts", scope="module")
def fixture_hosts():
    with open(os.path.join(FIXTURES, "fleet.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["hosts"]


@pytest.fixture(name="lab", scope="module")
def fixture_lab(hosts):
    with open(os.path.join(FIXTURES, "flows.csv"), encoding="utf-8") as handle:
        return discover(read_csv(handle), hosts, None, EXCLUDE_MDNS)


def csv_flows(*rows):
    return read_csv(["src,dst,proto,dport,count,listening"] + list(rows))


def test_the_lab_pattern_becomes_exactly_the_expected_policy(lab):
    assert lab.proposal.yaml == EXPECTED


def test_the_yaml_is_the_document_and_the_real_compiler_takes_it(lab, hosts):
    document = yaml.safe_load(lab.proposal.yaml)["mseg_policy"]
    assert document == lab.proposal.document
    fleet = compile_fleet(document, hosts)
    assert [r.id for r in fleet.policy.rules] == [1000, 1010, 1020, 1030, 1040, 1050, 1060]
    assert fleet.warnings == []


def test_every_flow_above_the_threshold_is_allowed_and_the_rest_is_closed(lab):
    data = lab.to_data()
    assert data["coverage"] == {"flows": 25, "uncovered": []}
    assert data["closed_pairs"]["pairs"] == [
        "legacy-01 -> role=app", "legacy-01 -> role=bastion", "legacy-01 -> role=mon", "legacy-01 -> role=web",
        "role=app -> legacy-01", "role=app -> role=app", "role=app -> role=bastion", "role=app -> role=mon",
        "role=app -> role=web",
        "role=db -> legacy-01", "role=db -> role=app", "role=db -> role=bastion", "role=db -> role=mon",
        "role=db -> role=web",
        "role=web -> legacy-01", "role=web -> role=bastion", "role=web -> role=db", "role=web -> role=mon",
        "role=web -> role=web"]


def test_what_was_left_out_is_reported_with_its_reason(lab):
    left = {reason: [(e["flow"], e["connections"]) for e in item["examples"]]
            for reason, item in lab.to_data()["left_out"].items()}
    assert left == {
        "bad_address": [],
        "excluded": [("10.0.1.1 -> 10.0.1.2 udp/5353", 50)],
        "loopback": [("10.0.1.1 -> 10.0.1.1 tcp/8080", 5)],
        "outside_only": [],
        # the receiver had nothing listening: a scan or a refused connection, not a service
        "not_listening": [("10.0.2.1 -> 10.0.1.1 tcp/8081", 12), ("198.51.100.77 -> 10.0.1.1 tcp/23", 1)],
        # nobody knows, and the port is a client's: never proposed
        "ephemeral": [("10.0.2.1 -> 10.0.1.1 tcp/45000", 12)],
        # noise from an unlabelled outside address, under min_count 3
        "below_threshold": [("198.51.100.77 -> web-01 tcp/25", 2)],
    }


def test_ids_avoid_the_current_policy_and_the_diff_says_what_it_would_drop_and_what_nobody_used(hosts):
    current = {"rules": [
        {"id": 1000, "name": "web-to-app", "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "app"}},
         "ports": ["tcp/8080"]},
        {"id": 1020, "name": "mysql", "from": {"any": True}, "to": {"tags": {"role": "db"}}, "ports": ["tcp/3306"]},
    ]}
    flows = csv_flows("10.0.1.1,10.0.2.1,tcp,8080,9,true", "10.0.1.2,10.0.2.2,tcp,8443,4,true",
                      "10.0.2.1,10.0.3.1,tcp,5432,3,true")
    report = discover(flows, hosts, current, {"min_count": 1})
    assert [(r.id, r.name) for r in report.proposal.rules] == [(1010, "app-to-db"), (1030, "web-to-app")]
    assert report.current == {
        "would_drop": [
            {"flow": "app-01 -> db-01 tcp/5432", "connections": 3, "dropped_at": "ingress of db-01 by default"},
            {"flow": "web-02 -> app-02 tcp/8443", "connections": 4, "dropped_at": "ingress of app-02 by default"},
        ],
        "unused_rules": [{"id": 1020, "name": "mysql"}],
    }


def test_ports_merge_only_across_the_gap_the_settings_allow(hosts):
    rows = ["10.0.1.1,10.0.2.1,tcp,8080,5,true", "10.0.1.1,10.0.2.1,tcp,8082,5,true",
            "10.0.1.1,10.0.2.1,tcp,9000,5,true", "10.0.1.1,10.0.2.1,udp,8081,5,true"]
    exact = discover(csv_flows(*rows), hosts).proposal.document["rules"]
    assert exact[0]["ports"] == ["tcp/8080", "tcp/8082", "tcp/9000", "udp/8081"]
    gapped = discover(csv_flows(*rows), hosts, settings={"port_gap": 1}).proposal.document["rules"]
    assert gapped[0]["ports"] == ["tcp/8080-8082", "tcp/9000", "udp/8081"]


def test_an_outside_prefix_holding_a_fleet_address_is_not_proposed(hosts):
    # 10.0.1.0/24 holds web-01 and web-02: the two outside addresses stay themselves
    flows = csv_flows("10.0.1.50,10.0.2.1,tcp,8080,5,true", "10.0.1.51,10.0.2.1,tcp,8080,5,true",
                      "198.51.100.1,10.0.2.1,tcp,8080,5,true", "198.51.100.2,10.0.2.1,tcp,8080,5,true")
    rule = discover(flows, hosts).proposal.document["rules"][0]
    assert rule["from"] == {"cidr": ["10.0.1.50", "10.0.1.51", "198.51.100.0/24"]}


def test_outside_ipv6_addresses_aggregate_into_their_64_and_the_prefix_length_is_a_setting(hosts):
    rows = ["2001:db8:0:7::10,fd00:1::1,tcp,443,5,true", "2001:db8:0:7::11,fd00:1::1,tcp,443,5,true"]
    rule = discover(csv_flows(*rows), hosts).proposal.document["rules"][0]
    assert rule["from"] == {"cidr": ["2001:db8:0:7::/64"]}
    rule = discover(csv_flows(*rows), hosts, settings={"outside_prefix_v6": 124}).proposal.document["rules"][0]
    assert rule["from"] == {"cidr": ["2001:db8:0:7::10/124"]}


def test_a_host_given_as_a_prefix_owns_its_addresses_and_no_outside_prefix_overlaps_it():
    hosts = {"nat-01": {"tags": {"role": "nat"}, "addresses": ["198.51.100.16/28"]},
             "app-01": {"tags": {"role": "app"}, "addresses": ["10.0.2.1"]}}
    flows = csv_flows("198.51.100.20,10.0.2.1,tcp,8080,5,true", "198.51.100.40,10.0.2.1,tcp,8080,5,true",
                      "198.51.100.41,10.0.2.1,tcp,8080,5,true")
    rules = discover(flows, hosts).proposal.document["rules"]
    # 198.51.100.20 is nat-01's; the other two stay themselves, as 198.51.100.0/24 overlaps nat-01's /28
    assert [(r["from"], r["to"]) for r in rules] == [
        ([{"tags": {"role": "nat"}}, {"cidr": ["198.51.100.40", "198.51.100.41"]}], {"tags": {"role": "app"}})]


def test_exclusions_by_prefix_and_port_are_left_out_and_reported(hosts):
    flows = csv_flows("192.0.2.9,10.0.1.1,tcp,443,5,true", "192.0.2.9,10.0.1.1,tcp,80,5,true",
                      "10.0.1.1,10.0.2.1,tcp,8080,5,true")
    report = discover(flows, hosts, settings={"exclude": [{"cidr": ["192.0.2.0/24"], "ports": ["tcp/443"]}]})
    assert [r["name"] for r in report.proposal.document["rules"]] == ["net-192-0-2-9-to-web", "web-to-app"]
    assert report.proposal.document["rules"][0]["ports"] == ["tcp/80"]
    assert report.to_data()["left_out"]["excluded"]["examples"] == [
        {"flow": "192.0.2.9 -> 10.0.1.1 tcp/443", "connections": 5}]


def test_with_egress_deny_flows_to_outside_get_rules_else_the_default_allows_them(hosts):
    flows = csv_flows("10.0.2.1,192.0.2.10,tcp,443,5,", "10.0.2.2,192.0.2.11,tcp,443,5,")
    allow = discover(flows, hosts)
    assert allow.proposal.rules == []
    assert allow.to_data()["allowed_by_egress_default"] == ["app-01 -> 192.0.2.0/24 tcp/443",
                                                            "app-02 -> 192.0.2.0/24 tcp/443"]
    assert allow.uncovered == []
    current = {"defaults": {"egress": "deny"}, "rules": []}
    deny = discover(csv_flows("10.0.2.1,192.0.2.10,tcp,443,5,", "10.0.2.2,192.0.2.11,tcp,443,5,"), hosts, current)
    assert deny.proposal.document == {"defaults": {"ingress": "deny", "egress": "deny"}, "rules": [
        {"id": 1000, "name": "app-to-net-192-0-2-0-24", "from": {"tags": {"role": "app"}},
         "to": {"cidr": ["192.0.2.0/24"]}, "ports": ["tcp/443"]}]}
    assert deny.uncovered == []


def test_labels_are_grouped_by_the_labels_asked_for(hosts):
    flows = csv_flows("10.0.1.1,10.0.2.1,tcp,8080,5,true")
    rule = discover(flows, hosts, settings={"group_by": ["role", "env"]}).proposal.document["rules"][0]
    assert rule["name"] == "web-prod-to-app-prod"
    assert rule["from"] == {"tags": {"role": "web", "env": "prod"}}


def test_label_values_and_host_names_yaml_would_misread_are_quoted():
    hosts = {
        "yes": {"tags": {"role": "yes"}, "addresses": ["10.1.0.1"]},
        "0123": {"tags": {"role": "2001-12-14"}, "addresses": ["10.1.0.2"]},
        "on": {"tags": {"role": "8080"}, "addresses": ["10.1.0.3"]},
        "off": {"addresses": ["10.1.0.4"]},
    }
    flows = csv_flows("10.1.0.1,10.1.0.2,tcp,80,5,true", "10.1.0.2,10.1.0.3,tcp,80,5,true",
                      "10.1.0.4,10.1.0.3,tcp,80,5,true")
    report = discover(flows, hosts)
    assert [line for line in report.proposal.yaml.splitlines() if line.startswith(("      from", "      to"))] == [
        '      from: [{tags: {role: "2001-12-14"}}, {hosts: ["off"]}]',
        '      to: {tags: {role: "8080"}}',
        '      from: {tags: {role: "yes"}}',
        '      to: {tags: {role: "2001-12-14"}}',
    ]
    assert yaml.safe_load(report.proposal.yaml)["mseg_policy"] == report.proposal.document
    assert report.uncovered == []


def test_closed_pairs_are_not_listed_beyond_the_bound(hosts, monkeypatch):
    monkeypatch.setattr(check, "MAX_GROUPS", 5)
    data = discover(csv_flows("10.0.1.1,10.0.2.1,tcp,8080,5,true"), hosts).to_data()
    assert data["closed_pairs"] == {"count": None, "pairs": [], "not_listed": "more than 5 label groups"}


def test_the_coverage_check_catches_a_proposal_that_drops_a_flow(hosts, monkeypatch):
    real = check.propose

    def lossy(*args, **kwargs):
        proposal = real(*args, **kwargs)
        proposal.document["rules"].pop()
        return proposal

    monkeypatch.setattr(check, "propose", lossy)
    report = discover(csv_flows("10.0.1.1,10.0.2.1,tcp,8080,5,true", "10.0.2.1,10.0.3.1,tcp,5432,5,true"), hosts)
    assert report.to_data()["coverage"]["uncovered"] == [
        {"flow": "web-01 -> app-01 tcp/8080", "dropped_at": "ingress of app-01 by default"}]


def test_an_empty_window_proposes_no_rules_and_says_so(hosts):
    report = discover(csv_flows(), hosts)
    assert report.proposal.yaml.endswith("  rules: []\n")
    assert yaml.safe_load(report.proposal.yaml)["mseg_policy"]["rules"] == []
    assert report.to_data()["records"] == {"read": 0, "malformed": 0, "problems": []}


def test_malformed_records_are_each_said_and_the_rest_is_used(hosts):
    flows = read_csv(["src,dst,proto,dport,count,listening",
                      "10.0.1.1,10.0.2.1,tcp,99999,1,true",
                      "10.0.1.1,10.0.2.1,sctp,1,1,true",
                      "10.0.1.1,10.0.2.1,tcp,8080,-2,true",
                      "10.0.1.1,10.0.2.1,tcp,8080,1,maybe",
                      "10.0.1.1,10.0.2.1,tcp",
                      "10.0.1.1,10.0.2.1,6,8080,5,true",
                      "web-01,10.0.2.1,tcp,8080,5,true"], source="flows.csv")
    assert flows.problems == [
        "flows.csv line 2: dport: '99999' is not a port from 1 to 65535",
        "flows.csv line 3: proto: 'sctp' is not tcp, udp, icmp or an IP protocol (ah, esp, gre, vrrp, or a number "
        "1-255)",
        "flows.csv line 4: count: '-2' is not a positive integer",
        "flows.csv line 5: listening: 'maybe' is not true, false or empty (unknown)",
        "flows.csv line 6: 3 fields, the header has 6",
    ]
    report = discover(flows, hosts)
    assert [r["name"] for r in report.proposal.document["rules"]] == ["web-to-app"]
    assert report.to_data()["left_out"]["bad_address"]["examples"] == [
        {"flow": "web-01 -> 10.0.2.1 tcp/8080", "connections": 5}]


def test_records_as_mappings_and_ip_protocols(hosts):
    flows = read_mappings([{"src": "10.0.9.1", "dst": "10.0.9.2", "proto": "vrrp", "count": 5},
                           {"src": "10.0.9.1", "dst": "10.0.9.2", "proto": 47, "count": 5},
                           "nonsense"], source="flows.json")
    assert flows.problems == ["flows.json[2]: expected a mapping with src, dst, proto, dport, count, listening; "
                              "got 'nonsense'"]
    rule = discover(flows, hosts).proposal.document["rules"][0]
    assert rule["ports"] == ["gre", "vrrp"]


def test_a_csv_without_the_needed_columns_is_refused():
    with pytest.raises(MsegError) as raised:
        read_csv(["source,destination,port"], source="flows.csv")
    assert str(raised.value) == ("flows.csv: the header line source,destination,port lacks src, dst, proto, dport; "
                                 "the first line must name the columns src,dst,proto,dport,count,listening")


def test_bad_settings_are_all_reported():
    with pytest.raises(MsegError) as raised:
        parse_settings({"min_count": 0, "group_by": [""], "ephemeral_ports": "60999-32768", "exclude": [{}],
                        "outside_prefix_v4": 40, "first_idd": 5})
    assert raised.value.messages == [
        "mseg_discover: unknown key 'first_idd' (did you mean 'first_id'?); allowed keys are ephemeral_ports, "
        "exclude, first_id, group_by, id_step, min_count, outside_min_addresses, outside_prefix_v4, "
        "outside_prefix_v6, port_gap",
        "mseg_discover_group_by[0]: '' is not a label name (a non-empty string)",
        "mseg_discover_min_count: 0 is not an integer from 1 to 2147483648",
        "mseg_discover_outside_prefix_v4: 40 is not an integer from 8 to 32",
        "mseg_discover_ephemeral_ports: '60999-32768' is not a port range first-last within 1-65535; write the "
        "hosts' net.ipv4.ip_local_port_range, e.g. 32768-60999",
        "mseg_discover_exclude[0]: expected a mapping with cidr, ports or both, e.g. {cidr: [192.0.2.0/24], "
        "ports: [udp/5353]}; got an empty one",
    ]


def test_the_input_fleet_is_not_changed(hosts):
    before = copy.deepcopy(hosts)
    discover(csv_flows("10.0.1.1,10.0.2.1,tcp,8080,5,true"), hosts)
    assert hosts == before
