"""System rules: the product's own flows, declared by the roles, compiled with the policy, evaluated before the
policy's rules, rendered apart, shown by trace, and never wider than declared."""

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet
from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import trace
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan
from ansible_collections.mseg.fleet.plugins.plugin_utils.inventory import gather_system
from ansible_collections.mseg.fleet.tests.unit.nft.samples import json_form

HOSTS = {
    "ctl-01": {"addresses": ["10.0.0.61"], "groups": ["controllers"], "mode": "enforce"},
    "ctl-02": {"addresses": ["10.0.0.62", "fd00::62"], "groups": ["controllers"], "mode": "enforce"},
    "web-01": {"addresses": ["10.0.0.21"], "groups": ["web"], "mode": "enforce", "tags": {"role": "web"}},
}
# A policy that denies everything into the controllers, and has no rule for VRRP or 8443.
POLICY = {"defaults": {"ingress": "deny", "egress": "deny"}, "rules": [
    {"id": 10, "name": "no-one-to-controllers", "from": {"any": True}, "to": {"group": "controllers"},
     "action": "deny"},
    {"id": 20, "from": {"any": True}, "to": {"any": True}, "ports": ["tcp/22"]},
]}
SETTINGS = {"agent_port": 8443, "operator_port": 443, "operators": ["192.0.2.0/28"], "vip": "10.0.0.60"}


def compile_with(settings=None, hosts=("ctl-01", "ctl-02"), policy=None):
    system = {"controller": {"hosts": list(hosts), "settings": dict(SETTINGS, **(settings or {}))}}
    return compile_fleet(policy or POLICY, {k: dict(v) for k, v in HOSTS.items()}, system)


def verdict(fleet, src, dst, port):
    return {(item.to_data()["family"], item.allowed, item.to_data()["decided_by"])
            for item in trace(fleet, src, dst, port)}


def test_vrrp_between_replicas_is_a_system_rule_before_the_policys_deny():
    fleet = compile_with()
    assert verdict(fleet, "ctl-01", "ctl-02", "vrrp") == {("ipv4", True, "system rule controller.vrrp")}
    assert verdict(fleet, "ctl-02", "ctl-01", "proto/112") == {("ipv4", True, "system rule controller.vrrp")}


def test_vrrp_from_anyone_else_is_not_widened_by_the_system_rule():
    fleet = compile_with()
    assert verdict(fleet, "web-01", "ctl-01", "vrrp") == {("ipv4", False, "rule 10 (no-one-to-controllers)")}
    assert verdict(fleet, "10.0.0.99", "ctl-02", "vrrp") == {("ipv4", False, "rule 10 (no-one-to-controllers)")}
    # a replica's other protocols stay under the policy
    assert verdict(fleet, "ctl-01", "ctl-02", "tcp/5432") == {("ipv4", False, "rule 10 (no-one-to-controllers)")}


def test_agents_reach_the_replicas_and_the_vip_on_the_agent_port_only():
    fleet = compile_with()
    assert verdict(fleet, "web-01", "ctl-01", "tcp/8443") == {("ipv4", True, "system rule controller.agents")}
    assert verdict(fleet, "web-01", "10.0.0.60", "tcp/8443") == {("ipv4", True, "system rule controller.agents")}
    assert verdict(fleet, "web-01", "ctl-01", "tcp/8444") == {("ipv4", False, "rule 10 (no-one-to-controllers)")}
    egress = fleet.plans["web-01"].system_rules("egress")
    assert [(r.rule.name, r.peers.to_data()) for r in egress] == [
        ("controller.agents", ["10.0.0.60/31", "10.0.0.62", "fd00::62"])]


def test_operators_reach_the_operator_port_from_their_prefixes_only():
    fleet = compile_with()
    assert verdict(fleet, "192.0.2.5", "ctl-01", "tcp/443") == {("ipv4", True, "system rule controller.operators")}
    assert verdict(fleet, "192.0.2.16", "ctl-01", "tcp/443") == {("ipv4", False, "rule 10 (no-one-to-controllers)")}
    assert verdict(fleet, "web-01", "ctl-01", "tcp/443") == {("ipv4", False, "rule 10 (no-one-to-controllers)")}


def test_the_port_is_the_roles_setting():
    fleet = compile_with({"agent_port": 9443})
    assert verdict(fleet, "web-01", "ctl-01", "tcp/9443") == {("ipv4", True, "system rule controller.agents")}
    assert verdict(fleet, "web-01", "ctl-01", "tcp/8443") == {("ipv4", False, "rule 10 (no-one-to-controllers)")}


def test_no_controllers_no_system_rules():
    fleet = compile_fleet(POLICY, {k: dict(v) for k, v in HOSTS.items()})
    assert fleet.system == ()
    assert all(not plan.system_rules(d) for plan in fleet.plans.values() for d in contract.DIRECTIONS)


def test_the_plan_lists_every_system_rule_for_the_operator():
    data = compile_with().to_data()
    assert [(r["name"], r["from_hosts"], r["to_hosts"], r["ports"]) for r in data["system_rules"]] == [
        ("controller.vrrp", ["ctl-01", "ctl-02"], ["ctl-01", "ctl-02"], ["vrrp"]),
        ("controller.agents", ["ctl-01", "ctl-02", "web-01"], ["ctl-01", "ctl-02"], ["tcp/8443"]),
        ("controller.operators", [], ["ctl-01", "ctl-02"], ["tcp/443"]),
    ]
    assert data["system_rules"][0]["from"] == ["10.0.0.61", "10.0.0.62", "fd00::62"]
    assert [r["system_rule"] for r in data["hosts"]["ctl-01"]["system"]["ingress"]] == [
        "controller.vrrp", "controller.agents", "controller.operators"]


def test_rendered_after_management_before_the_policy_and_within_the_contract():
    text = render_plan(compile_with().plans["ctl-01"])[0]
    lines = [line.strip() for line in text.splitlines()]
    chain = lines[lines.index("chain input {"):]
    chain = chain[:chain.index("}")]
    system = [i for i, line in enumerate(chain) if 'comment "SYS=' in line]
    management = [i for i, line in enumerate(chain) if 'comment "management' in line]
    policy = [i for i, line in enumerate(chain) if 'comment "ID=' in line]
    assert max(management) < min(system) and max(system) < min(policy)
    assert 'meta l4proto 112 ip saddr @sys_controller_vrrp_in_v4 counter name "sys_controller_vrrp_in" accept ' \
           'comment "SYS=controller.vrrp"' in chain
    assert contract.check_ruleset(json_form(text)) == []


def test_bad_settings_are_reported_with_the_variable_to_fix():
    with pytest.raises(MsegError) as raised:
        compile_with({"agent_port": 70000, "operators": ["192.0.2.1/24"], "vip": "ctl-vip"})
    assert raised.value.messages == [
        "system rules: controller_vip 'ctl-vip' is not a valid IPv4 or IPv6 address or prefix; write e.g. "
        "10.20.0.0/16 or 2001:db8::/32",
        "system rules: controller_operator_allow[0]: '192.0.2.1/24' has host bits set; write 192.0.2.0/24, or "
        "192.0.2.1/32 for the single address",
    ]
    with pytest.raises(MsegError) as raised:
        compile_with({"agent_port": 70000})
    assert raised.value.messages == [
        "system rule controller.agents: port tcp/70000 has a port outside 1-65535; check controller_agent_port"]


class _Templar(object):
    @staticmethod
    def template(value):
        return value


def test_gather_reads_the_controllers_group_and_the_roles_settings_over_its_defaults():
    task_vars = {"groups": {"controllers": ["ctl-02", "ctl-01"], "all": ["ctl-01", "ctl-02", "web-01"]},
                 "hostvars": {"ctl-01": {"controller_agent_port": 9443}, "ctl-02": {}, "web-01": {}}}
    assert gather_system(task_vars, _Templar()) == {"controller": {"hosts": ["ctl-01", "ctl-02"], "settings": {
        "agent_port": 9443, "operator_port": 443, "operators": [], "vip": "", "conn_limit": 64}}}
    assert gather_system({"groups": {"all": []}, "hostvars": {}}, _Templar()) == {}


# The per-source connection limit on the controllers' ports (issue 15 item 9): nginx counts a connection only once
# its request header is read, so the kernel bounds the half-open ones.

def limit_rules(text):
    return [line.strip() for line in text.splitlines() if 'comment "SYS=controller.connlimit"' in line]


def test_the_connection_limit_is_compiled_from_the_roles_setting_onto_the_replicas_only():
    fleet = compile_with({"conn_limit": 5})
    assert [limit.to_data() for limit in fleet.limits] == [
        {"name": "controller.connlimit", "hosts": ["ctl-01", "ctl-02"], "ports": ["tcp/443", "tcp/8443"],
         "per_source": 5}]
    assert [limit.per_source for limit in fleet.plans["ctl-02"].system_limits()] == [5]
    assert fleet.plans["web-01"].system_limits() == ()
    data = fleet.to_data()
    assert data["system_limits"] == [limit.to_data() for limit in fleet.limits]
    assert data["hosts"]["ctl-01"]["system_limits"] == [
        {"system_limit": "controller.connlimit", "ports": ["tcp/443", "tcp/8443"], "per_source": 5}]
    assert data["hosts"]["web-01"]["system_limits"] == []


@pytest.mark.parametrize("value", [0, None])
def test_a_limit_of_zero_or_unset_renders_nothing(value):
    fleet = compile_with({"conn_limit": value})
    assert fleet.limits == () and fleet.plans["ctl-01"].system_limits() == ()
    text = render_plan(fleet.plans["ctl-01"])[0]
    assert limit_rules(text) == [] and "connlimit" not in text


@pytest.mark.parametrize("value, shown", [(-1, "-1"), ("many", "'many'"), (True, "true"), (10 ** 7, "10000000")])
def test_a_bad_limit_names_the_variable_and_how_to_fix_it(value, shown):
    with pytest.raises(MsegError) as raised:
        compile_with({"conn_limit": value})
    assert raised.value.messages == [
        "system limit controller.connlimit: controller_conn_limit_per_source %s is not a number of connections; set "
        "it to an integer from 1 to 1000000, or 0 for no limit" % shown]


def test_enforce_drops_beyond_the_limit_before_any_accept_but_managements_and_stays_within_the_contract():
    text = render_plan(compile_with({"conn_limit": 3}).plans["ctl-01"])[0]
    assert limit_rules(text) == [
        'tcp dport { 443, 8443 } ct state new add @sys_controller_connlimit_v4 { ip saddr ct count over 3 } counter '
        'name "sys_controller_connlimit_in" drop comment "SYS=controller.connlimit"',
        'tcp dport { 443, 8443 } ct state new add @sys_controller_connlimit_v6 { ip6 saddr ct count over 3 } counter '
        'name "sys_controller_connlimit_in" drop comment "SYS=controller.connlimit"']
    lines = [line.strip() for line in text.splitlines()]
    chain = lines[lines.index("chain input {"):]
    chain = chain[:chain.index("}")]
    limited = [i for i, line in enumerate(chain) if "SYS=controller.connlimit" in line]
    accepts = [i for i, line in enumerate(chain) if line.endswith(" accept") or " accept comment" in line]
    management = [i for i, line in enumerate(chain) if 'comment "management' in line]
    assert max(management) < min(limited)
    assert all(i > max(limited) for i in accepts if i not in management and "ct state established" not in chain[i]
               and 'iif "lo"' not in chain[i] and "icmpv6 type" not in chain[i])
    assert "sys_controller_connlimit_v4 {\n\t\ttype ipv4_addr\n\t\tflags dynamic\n\t}" in text
    assert "connlimit" not in text[text.index("chain output {"):]
    assert contract.check_ruleset(json_form(text)) == []


def test_observe_counts_what_enforce_would_drop_and_drops_nothing():
    fleet = compile_with({"conn_limit": 3}, policy=POLICY)
    plan = fleet.plans["ctl-01"]._replace(mode="observe")
    rules = limit_rules(render_plan(plan)[0])
    assert len(rules) == 2 and all(r.endswith('counter name "sys_controller_connlimit_in" comment '
                                              '"SYS=controller.connlimit"') for r in rules)
    assert not any(" drop" in r for r in rules)
    assert contract.check_ruleset(json_form(render_plan(plan)[0])) == []


def test_trace_names_the_limit_a_flow_counts_against():
    fleet = compile_with({"conn_limit": 3})
    for port in ("tcp/8443", "tcp/443"):
        (result,) = [item.to_data() for item in trace(fleet, "web-01", "ctl-01", port)]
        assert result["ingress"]["limited_by"] == ["system limit controller.connlimit (3 connections per source)"]
    (result,) = [item.to_data() for item in trace(fleet, "web-01", "ctl-01", "tcp/22")]
    assert result["ingress"]["limited_by"] == []
    (result,) = [item.to_data() for item in trace(fleet, "ctl-01", "web-01", "tcp/8443")]
    assert result["ingress"]["limited_by"] == []
