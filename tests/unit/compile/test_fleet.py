"""Fleet compile: tags, selectors, addresses and the per-host plans."""

import netaddr
import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import PortSpec
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import AddressSet, compile_fleet, merge_tags


@pytest.fixture(name="fleet")
def fixture_fleet(load_fleet):
    data = load_fleet()
    return compile_fleet(data["policy"], data["hosts"])


def rules_of(plan, direction):
    return [(r.rule.id, r.action) for r in plan.rules(direction)]


def test_group_tags_are_united_and_host_tags_win_per_label():
    tags, problems = merge_tags(
        [("web", {"role": "web", "zone": "corp"}), ("db", {"role": "db"}), ("prod", {"env": "prod"})],
        {"zone": "dmz"}, "host h")
    assert problems == []
    assert tags == {"role": frozenset({"web", "db"}), "env": frozenset({"prod"}), "zone": frozenset({"dmz"})}


def test_bad_tag_layers_are_reported_with_their_origin():
    _tags, problems = merge_tags([("web", ["role=web"])], {"role": {"x": 1}}, "host h")
    assert problems == [
        "host h: mseg_tags of group web: expected a mapping of label to value, e.g. {role: web, env: prod}; "
        "got a list",
        "host h: mseg_tags.role: value a mapping is not a string or number; write e.g. role: web",
    ]


def test_plans_per_host_follow_the_rules(fleet):
    plans = fleet.plans
    # ingress: log first, then deny, then allow; each sorted by id
    assert rules_of(plans["db-01"], "ingress") == [(40, "log"), (30, "deny"), (20, "allow")]
    assert rules_of(plans["app-01"], "ingress") == [(30, "deny"), (10, "allow")]
    # a rule governs the sender's egress too; `from: any` includes every managed host
    assert rules_of(plans["web-02"], "egress") == [(40, "log"), (30, "deny"), (10, "allow")]
    assert rules_of(plans["app-01"], "egress") == [(40, "log"), (20, "allow")]
    # cidr selects a managed host's address: legacy-01 only for 192.168.50.9, restricted to that address
    legacy = [r for r in plans["legacy-01"].ingress if r.rule.id == 50]
    assert len(legacy) == 1 and legacy[0].local.to_data() == ["192.168.50.9"]
    assert plans["legacy-01"].mode == "bypass"


def test_address_sets_are_merged_and_shared(fleet):
    db_rule = [r for r in fleet.plans["db-01"].ingress if r.rule.id == 20][0]
    legacy_rule = [r for r in fleet.plans["legacy-01"].ingress if r.rule.id == 20][0]
    assert db_rule.peers is legacy_rule.peers
    assert db_rule.peers.to_data() == ["10.0.2.1", "fd00:2::1"]
    web_in = [r for r in fleet.plans["app-01"].ingress if r.rule.id == 10][0]
    assert web_in.peers.to_data() == ["10.0.1.1", "10.0.1.2", "fd00:1::1"]


def test_the_plan_is_data_for_any_backend(fleet):
    """Addresses are networks and ports PortSpecs: no backend's syntax is written into the plan."""
    plan = fleet.plans["db-01"]
    assert plan.defaults == {"ingress": "deny", "egress": "allow"} and plan.addresses == plan.host.addresses
    for item in plan.ingress + plan.egress:
        assert isinstance(item.id, int) and item.action in ("allow", "deny", "log")
        for version in (4, 6):
            assert all(isinstance(c, netaddr.IPNetwork) and c.version == version for c in item.peers.family(version))
        assert item.ports is None or all(isinstance(p, PortSpec) for p in item.ports)
    for entry in plan.management:
        assert all(isinstance(c, netaddr.IPNetwork) for c in entry.networks.family(4) + entry.networks.family(6))


def test_an_address_set_knows_when_it_holds_a_whole_family():
    everything = AddressSet("any", netaddr.IPSet(["0.0.0.0/0", "fd00::/8"]))
    assert everything.full_v4 and not everything.full_v6
    assert not AddressSet("one", netaddr.IPSet(["10.0.0.1/32"])).full_v4


def test_selector_that_matches_nothing_is_a_warning(fleet):
    assert fleet.warnings == ["rule 60 (ghost): from: selects no host in the inventory (tags={'role': ['nothing']})"]


def test_default_address_is_ansible_host(fleet):
    assert [str(a) for a in fleet.hosts["web-02"].addresses] == ["10.0.1.2/32"]


def test_every_host_problem_is_reported_at_once(load_fleet):
    data = load_fleet()
    data["hosts"]["web-01"]["addresses"] = None
    data["hosts"]["web-01"]["ansible_host"] = "web-01.example.com"
    data["hosts"]["web-02"]["mode"] = "enforcing"
    data["hosts"]["db-01"]["management"] = [{"cidr": "10.0.0.0/33"}, {"ports": ["tcp/22"]}]
    data["policy"]["rules"].append({"id": 10, "from": {"any": True}, "to": {"any": True}})
    with pytest.raises(MsegError) as raised:
        compile_fleet(data["policy"], data["hosts"])
    assert raised.value.messages == [
        "rule 10: id: used by rules[0] and rules[6]; rule ids must be unique",
        "host db-01: mseg_management[0].cidr[0]: '10.0.0.0/33' is not a valid IPv4 or IPv6 address or prefix; "
        "write e.g. 10.20.0.0/16 or 2001:db8::/32",
        "host db-01: mseg_management[1]: cidr: missing; give the prefix the operators connect from",
        "host web-01: no address: set mseg_addresses (a list of its IPv4/IPv6 addresses) or make ansible_host an "
        "IP address (it is 'web-01.example.com')",
        "host web-02: mseg_mode: 'enforcing' is not one of observe, enforce, bypass",
    ]


def test_mseg_addresses_are_parsed_like_policy_prefixes_with_their_own_messages(load_fleet):
    data = load_fleet()
    data["hosts"]["web-01"]["addresses"] = []
    data["hosts"]["web-02"]["addresses"] = ["10.0.1.2", "10.0.1.0/16", "db-01", "fd00:1::2", "10.0.1.2"]
    with pytest.raises(MsegError) as raised:
        compile_fleet(data["policy"], data["hosts"])
    assert raised.value.messages == [
        "host web-01: mseg_addresses: empty list; list the host's addresses, e.g. [10.0.1.5]",
        "host web-02: mseg_addresses[1]: '10.0.1.0/16' has host bits set; write 10.0.0.0/16, or 10.0.1.0/32 for the "
        "single address",
        "host web-02: mseg_addresses[2]: 'db-01' is not a valid IPv4 or IPv6 address or prefix; write e.g. "
        "10.20.0.0/16 or 2001:db8::/32",
    ]
    data = load_fleet()
    data["hosts"]["web-02"]["addresses"] = ["fd00:1::2", "10.0.1.2", "10.0.1.2/32", "10.0.0.0/24"]
    fleet = compile_fleet(data["policy"], data["hosts"])
    assert [str(a) for a in fleet.hosts["web-02"].addresses] == ["10.0.0.0/24", "10.0.1.2/32", "fd00:1::2/128"]


def test_bad_tags_given_directly_are_reported():
    hosts = {"a": {"tags": {"role": {"nested": 1}}, "addresses": ["10.1.0.1"]},
             "b": {"tags": ["role=web"], "addresses": ["10.1.0.2"]}}
    with pytest.raises(MsegError) as raised:
        compile_fleet({"rules": []}, hosts)
    assert raised.value.messages == [
        "host a: mseg_tags.role: value a mapping is not a string or number; write e.g. role: web",
        "host b: mseg_tags: expected a mapping of label to value, e.g. {role: web, env: prod}; got a list",
    ]


def test_group_selector_and_not_tags():
    hosts = {
        "a": {"tags": {"role": "web"}, "groups": ["web", "dmz"], "addresses": ["10.1.0.1"]},
        "b": {"tags": {"role": "web", "legacy": "yes"}, "groups": ["web"], "addresses": ["10.1.0.2"]},
        "c": {"tags": {}, "groups": ["dmz"], "addresses": ["10.1.0.3"]},
    }
    policy = {"rules": [
        {"id": 1, "from": {"group": "dmz"}, "to": {"tags": {"role": "web"}, "not_tags": {"legacy": ["yes", "true"]}}},
        {"id": 2, "from": {"hosts": ["c", "zz"]}, "to": {"has": ["legacy"]}},
    ]}
    fleet = compile_fleet(policy, hosts)
    assert rules_of(fleet.plans["a"], "ingress") == [(1, "allow")]
    assert rules_of(fleet.plans["b"], "ingress") == [(2, "allow")]
    assert [r.peers.to_data() for r in fleet.plans["a"].ingress] == [["10.1.0.1", "10.1.0.3"]]
    assert fleet.warnings == ["rule 2: from: hosts zz are not in the inventory"]


def test_plan_data_lists_each_address_set_once(fleet):
    data = fleet.to_data()
    assert data["policy"]["digest"] == fleet.policy.digest
    assert data["address_sets"]["r20.from"] == ["10.0.2.1", "fd00:2::1"]
    assert data["hosts"]["db-01"]["ingress"][2] == {
        "rule": 20, "action": "allow", "peers": "r20.from", "local": None, "ports": ["tcp/5432"]}
