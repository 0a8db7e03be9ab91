"""Policy validation: every broken policy gives exactly the expected messages, all at once, never a traceback."""

import os

import pytest
import yaml

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import PortSpec
from ansible_collections.mseg.fleet.plugins.module_utils.compile.policy import parse_policy

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(HERE, "fixtures", "bad_policies.yml"), encoding="utf-8") as handle:
    BAD = yaml.safe_load(handle)


@pytest.mark.parametrize("case", BAD, ids=[c["case"] for c in BAD])
def test_bad_policy_gives_every_expected_message(case):
    with pytest.raises(MsegError) as raised:
        parse_policy(case["policy"])
    assert raised.value.messages == case["messages"]


def test_valid_policy_is_normalised_and_sorted_by_id():
    policy = parse_policy({
        "rules": [
            {"id": 20, "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "app", "env": ["prod", "stage"]}},
             "ports": ["tcp/8080", "tcp/8000-8099", "udp/53", "icmp", "TCP/8100"]},
            {"id": 3, "name": "log-all", "from": {"any": True}, "to": {"cidr": "10.0.0.0/8"}, "action": "log"},
        ],
    })
    assert policy.defaults == {"ingress": "deny", "egress": "allow"}
    assert [r.id for r in policy.rules] == [3, 20]
    web = policy.rule(20)
    assert web.action == "allow"
    assert web.ports == (PortSpec("icmp", None, None), PortSpec("tcp", 8000, 8100), PortSpec("udp", 53, 53))
    assert dict(web.destinations[0].tags) == {"env": frozenset({"prod", "stage"}), "role": frozenset({"app"})}
    assert policy.rule(3).label == "rule 3 (log-all)"


def test_digest_ignores_rule_order_and_spelling():
    a = parse_policy({"rules": [{"id": 1, "from": {"any": True}, "to": {"any": True}, "ports": ["tcp/22", "tcp/80"]},
                                {"id": 2, "from": {"any": True}, "to": {"any": True}}]})
    b = parse_policy({"defaults": {"ingress": "deny"},
                      "rules": [{"id": 2, "from": [{"any": True}], "to": {"any": True}, "action": "allow"},
                                {"id": 1, "from": {"any": True}, "to": {"any": True}, "ports": ["tcp/80", "tcp/22"]}]})
    c = parse_policy({"rules": [{"id": 1, "from": {"any": True}, "to": {"any": True}, "ports": ["tcp/22"]}]})
    assert a.digest == b.digest
    assert a.digest != c.digest


@pytest.mark.parametrize("junk", [
    0, 1.5, "rules", [[]], {"rules": [None, 3, [], {"id": 1, "from": None, "to": 7}]},
    {"rules": [{"id": 1, "from": {"tags": None, "cidr": None, "has": {}, "group": {}}, "to": {"hosts": [[]]}}]},
    {"defaults": [], "rules": [{"id": float("inf"), "ports": {"tcp": 80}, "from": {"any": True}, "to": {}}]},
    {"rules": [{"id": 2 ** 80, "name": "\u2603", "from": {"cidr": ["\x00"]}, "to": {"not_tags": {1: 2}}}]},
])
def test_malformed_input_never_raises_anything_but_mseg_error(junk):
    with pytest.raises(MsegError) as raised:
        parse_policy(junk)
    assert raised.value.messages
    assert all(isinstance(m, str) and m for m in raised.value.messages)
