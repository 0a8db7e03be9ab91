"""A ruleset in the JSON form, judged as it is (plugins/module_utils/nft/jsonform.py ``document_objects`` and
``check(..., scratch=False)``, common/contract.py ``check_ruleset``): every statement kind the renderer, the
bypass and the system rules emit passes in its JSON form; what nft's listing of a text would have normalised
(element objects, duplicate keys, fields nft ignores) and what the contract never allows is refused."""

import copy
import json

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import build_transaction
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform, runner
from ansible_collections.mseg.fleet.tests.unit.nft.fake import PATH, FakeNft

WHERE = {"family": "inet", "table": "mseg"}
PREFIX = "[MSEG-DROP] ID=7 "
# One statement list per statement kind the renderer, the bypass and the system rules write, as nft lists them.
STATEMENTS = {
    "ct state match, accept": [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                          "right": ["established", "related"]}}, {"accept": None}],
    "named counter, drop": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}},
                            {"counter": "invalid_in"}, {"drop": None}],
    "interface": [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": None}],
    "icmpv6 types": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                                "right": {"set": ["nd-router-solicit", "nd-neighbor-advert"]}}}, {"accept": None}],
    "address . port in a set": [{"match": {"op": "==", "left": {"concat": [
        {"payload": {"protocol": "ip", "field": "saddr"}}, {"payload": {"protocol": "tcp", "field": "dport"}}]},
        "right": "@mgmt_auto_v4"}}, {"counter": "mgmt"}, {"accept": None}],
    "port range, l4proto": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 112}},
                            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                       "right": {"range": [8000, 8080]}}}, {"accept": None}],
    "rate-limited logs": [{"limit": {"rate": 10, "burst": 20, "per": "second"}},
                          {"log": {"prefix": PREFIX}}, {"log": {"prefix": PREFIX, "group": 2710}}],
    "jump, goto": [{"jump": {"target": "deny_7_in"}}, {"goto": {"target": "allow_7_in"}}],
    "verdict map": [{"vmap": {"key": {"payload": {"protocol": "ip", "field": "saddr"}},
                              "data": "@allow_7_in_v4"}}],
    "continue, return": [{"continue": None}, {"return": None}],
    "mark write": [{"mangle": {"key": {"meta": {"key": "mark"}},
                               "value": {"|": [{"&": [{"meta": {"key": "mark"}}, 0xFFFF0000]}, 0x400]}}}],
}


def objects():
    """A table as nft lists it: sets of every type the contract allows, with every element form, and chains."""
    return [
        {"table": {"family": "inet", "name": "mseg"}},
        {"counter": dict(WHERE, name="invalid_in")},
        {"set": dict(WHERE, name="mgmt_auto_v4", type=["ipv4_addr", "inet_service"],
                     elem=[{"concat": ["192.0.2.1", 22]}])},
        {"set": dict(WHERE, name="mgmt_auto_v6", type=["ipv6_addr", "inet_service"])},
        {"set": dict(WHERE, name="r7_in_v4", type="ipv4_addr", flags=["interval"],
                     elem=["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}},
                           {"range": ["10.2.0.1", "10.2.0.9"]}])},
        {"set": dict(WHERE, name="r7_in_v6", type="ipv6_addr", flags=["interval"],
                     elem=["2001:db8::1", {"prefix": {"addr": "2001:db8:1::", "len": 48}}])},
        {"map": dict(WHERE, name="allow_7_in_v4", type="ipv4_addr", map="verdict", flags=["interval"],
                     elem=[[{"prefix": {"addr": "10.3.0.0", "len": 24}}, {"jump": {"target": "allow_7_in"}}],
                           ["10.4.0.1", {"accept": None}]])},
        {"chain": dict(WHERE, name="input", type="filter", hook="input", prio=0, policy="drop")},
        {"chain": dict(WHERE, name="deny_7_in")},
        {"chain": dict(WHERE, name="allow_7_in")},
    ] + [{"rule": dict(WHERE, chain="input", expr=expr, comment=name)} for name, expr in sorted(STATEMENTS.items())]


def document(items):
    return json.dumps({"nftables": items})


def refusal(items):
    with pytest.raises(jsonform.ScopeError) as err:
        jsonform.check(jsonform.document_objects(document(items)), scratch=False)
    return str(err.value)


def test_every_statement_kind_and_element_form_passes_and_is_what_is_loaded():
    items = objects()
    judged = jsonform.check(jsonform.document_objects(document(items)), scratch=False)
    assert judged == items
    loaded = json.loads(jsonform.transaction(judged))["nftables"]
    assert loaded[:2] == [{"add": {"table": items[0]["table"]}}, {"delete": {"table": items[0]["table"]}}]
    # chains before sets and maps (a verdict map's elements jump to chains), then the rules, each kind in its order
    rank = {"table": 0, "chain": 1, "counter": 2, "set": 2, "map": 2, "rule": 3}
    assert [command["add"] for command in loaded[2:]] == sorted(items, key=lambda item: rank[list(item)[0]])
    kinds = [list(command["add"])[0] for command in loaded[2:]]
    assert kinds.index("map") > max(at for at, kind in enumerate(kinds) if kind == "chain")
    assert jsonform.counts(judged) == {"tables": 1, "rules": len(STATEMENTS), "sets": 5, "elements": 8}


def test_a_document_is_told_from_a_text():
    assert jsonform.is_document(' \n{"nftables": []}') and not jsonform.is_document("table inet mseg {\n}\n")


@pytest.mark.parametrize("text, problem", [
    ('{"nftables": [{"table": {"family": "inet", "name": "mseg", "name": "other"}}]}',
     'the key "name" appears twice in one object'),
    ('{"nftables": [], "nftables": [{"flush": {"ruleset": null}}]}', 'the key "nftables" appears twice'),
    ('{"nftables": [{"rule": {"family": "inet", "table": "mseg", "chain": "input", "expr": [{"limit": '
     '{"rate": NaN}}]}}]}', "NaN is not a JSON number"),
    ('{"nftables": [{"table": ', "is not valid JSON"),
    ('[{"table": {"family": "inet", "name": "mseg"}}]', 'is not one object {"nftables": [...]}'),
    ('{"nftables": {"table": {}}}', 'is not one object {"nftables": [...]}'),
    ('{"nftables": [], "metainfo": {}}', 'is not one object {"nftables": [...]}'),
    ('{"nftables": [%s1%s]}' % ("[" * 100000, "]" * 100000), "nests deeper than Python reads"),
])
def test_a_document_is_read_strictly(text, problem):
    with pytest.raises(jsonform.ScopeError) as err:
        jsonform.document_objects(text)
    assert problem in str(err.value) and str(err.value).endswith("nothing was changed")


def replaced(kind, name, **fields):
    items = objects()
    for item in items:
        if kind in item and item[kind]["name"] == name:
            item[kind].update(fields)
    return items


@pytest.mark.parametrize("items, problem", [
    (replaced("set", "r7_in_v4", elem=[{"elem": {"val": "10.0.0.1", "timeout": 3600}}]),
     "element {'elem': {'val': '10.0.0.1', 'timeout': 3600}} is not a plain ipv4_addr"),
    (replaced("set", "r7_in_v4", elem=["host.example.com"]), "element 'host.example.com' is not a plain ipv4_addr"),
    (replaced("set", "r7_in_v4", elem=["@r7_in_v6"]), "element '@r7_in_v6' is not a plain"),
    (replaced("set", "r7_in_v4", elem=["$peers"]), "element '$peers' is not a plain"),
    (replaced("set", "r7_in_v4", elem=["10.0.0.256"]), "element '10.0.0.256' is not a plain"),
    (replaced("set", "r7_in_v4", elem=["10.0.0.0/8"]), "element '10.0.0.0/8' is not a plain"),
    (replaced("set", "r7_in_v4", elem=["2001:db8::1"]), "element '2001:db8::1' is not a plain ipv4_addr"),
    (replaced("set", "r7_in_v6", elem=["2001:DB8::1"]), "element '2001:DB8::1' is not a plain ipv6_addr"),
    (replaced("set", "r7_in_v6", elem=["2001:db8:0::1"]), "is not a plain ipv6_addr"),
    (replaced("set", "r7_in_v4", elem=[{"prefix": {"addr": "10.0.0.0", "len": 33}}]), "is not a plain"),
    (replaced("set", "r7_in_v4", elem=[{"prefix": {"addr": "10.0.0.0", "len": True}}]), "is not a plain"),
    (replaced("set", "r7_in_v4", elem=[{"prefix": {"addr": "10.0.0.0", "len": 8, "x": 1}}]), "is not a plain"),
    (replaced("set", "r7_in_v4", elem=[{"range": ["10.0.0.1", "gateway"]}]), "is not a plain"),
    (replaced("set", "r7_in_v4", elem={"set": ["10.0.0.1"]}), "holds elements that are not a list"),
    (replaced("set", "mgmt_auto_v4", elem=[{"concat": ["192.0.2.1", 70000]}]), "is not a plain ipv4_addr . "),
    (replaced("set", "mgmt_auto_v4", elem=[{"concat": ["192.0.2.1", "ssh"]}]), "is not a plain ipv4_addr . "),
    (replaced("set", "mgmt_auto_v4", elem=["192.0.2.1"]), "is not a plain ipv4_addr . inet_service"),
    (replaced("set", "r7_in_v4", type="ether_addr"), "set r7_in_v4: has type 'ether_addr'; the contract allows"),
    (replaced("set", "r7_in_v4", map="verdict"), "set r7_in_v4: has type 'ipv4_addr' : 'verdict'"),
    (replaced("map", "allow_7_in_v4", map="ipv4_addr"), "has type 'ipv4_addr' : 'ipv4_addr'"),
    (replaced("map", "allow_7_in_v4", elem=[["10.0.0.1", {"jump": {"target": "elsewhere"}}]]),
     "element ['10.0.0.1', {'jump': {'target': 'elsewhere'}}] is not an address mapped to a verdict"),
    (replaced("map", "allow_7_in_v4", elem=[["10.0.0.1", {"drop": {"x": 1}}]]), "is not an address mapped"),
    (replaced("map", "allow_7_in_v4", elem=["10.0.0.1"]), "is not an address mapped to a verdict"),
    (replaced("set", "r7_in_v4", stmt=[{"counter": None}]), "set r7_in_v4 carries stmt, which the contract"),
    (replaced("set", "r7_in_v4", timeout=60), "set r7_in_v4 carries timeout, which the contract"),
    (replaced("chain", "input", dev="eth0"), "chain input carries dev, which the contract"),
    (objects() + [{"rule": dict(WHERE, chain="input", expr=[{"accept": {"reason": 1}}])}],
     "statement accept carries {'reason': 1}; it takes no argument"),
    (objects() + [{"rule": dict(WHERE, chain="input", expr=[{"counter": {"packets": 0, "bytes": 0, "x": 1}}])}],
     "statement counter carries x, which the contract does not allow"),
    (objects() + [{"rule": dict(WHERE, chain="input", expr=[{"match": dict(op="==", left=1, right=1, stmt=1)}])}],
     "statement match carries stmt"),
    (objects() + [{"rule": dict(WHERE, chain="input", expr=[{"jump": {"target": "DOCKER"}}])}],
     "statement jump goes to {'target': 'DOCKER'}, not a chain of the contract"),
    (objects() + [{"rule": dict(WHERE, chain="input", index=0, expr=[{"accept": None}])}],
     "a rule in chain input carries index"),
    (objects() + [{"table": {"family": "ip", "name": jsonform.CANARY_NAME}}], "table ip mseg_canary is outside"),
    (objects() + [{"flush": {"ruleset": None}}], "a flush is not allowed"),
    (objects() + [{"add": {"table": {"family": "ip", "name": "nat"}}}], "a add is not allowed"),
    (objects()[1:], "it does not define table inet mseg"),
])
def test_what_a_document_could_say_beyond_the_contract_is_refused(items, problem):
    message = refusal(items)
    assert problem in message and message.endswith("nothing was changed"), message


def test_a_set_with_refused_elements_is_named_once():
    items = replaced("set", "r7_in_v4", elem=["10.0.0.1"] * 50000 + ["evil.example"] * 50000)
    message = refusal(items)
    assert message.count("evil.example") == 1


def peers_of(text, version):
    for item in json.loads(text)["nftables"]:
        if item.get("set", {}).get("name") == "mgmt_auto_v%d" % version:
            return item["set"].get("elem")
    raise AssertionError("no mgmt_auto_v%d" % version)


def test_the_management_peers_are_the_only_elements_of_the_auto_sets_of_a_document():
    content = document(objects())
    built = build_transaction(content, [("2001:DB8::9", 22), ("198.51.100.7", 2222)])
    assert jsonform.is_document(built)
    assert peers_of(built, 4) == [{"concat": ["198.51.100.7", 2222]}]  # the earlier 192.0.2.1 . 22 is dropped
    assert peers_of(built, 6) == [{"concat": ["2001:db8::9", 22]}]    # in the one spelling nft lists
    jsonform.check(jsonform.document_objects(built), scratch=False)
    assert build_transaction(content, [("198.51.100.7", 2222), ("2001:DB8::9", 22)]) == built
    assert peers_of(build_transaction(content, []), 4) is None
    bare = build_transaction(content, [])
    assert build_transaction(bare, []) is bare  # nothing to add or drop: the very content, not re-serialised


def test_a_document_without_an_auto_set_or_broken_fails_with_one_message():
    items = [item for item in objects() if item.get("set", {}).get("name") != "mgmt_auto_v6"]
    with pytest.raises(ApplyError) as err:
        build_transaction(document(items), [("2001:db8::9", 22)])
    assert "content does not declare set mgmt_auto_v6" in str(err.value)
    with pytest.raises(ApplyError) as err:
        build_transaction('{"nftables": [}', [])
    assert "the JSON ruleset is not valid JSON" in str(err.value)


def test_judging_does_not_change_the_objects_it_was_given():
    items = objects()
    kept = copy.deepcopy(items)
    jsonform.transaction(jsonform.check(items, scratch=False))
    assert items == kept


def test_a_document_too_deep_to_judge_or_write_back_fails_with_one_message(monkeypatch):
    """Python may read a document that nests nearly as deep as its recursion limit and still fail to write the
    judged objects back one level deeper: one message, no traceback."""
    def too_deep(objects):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(jsonform, "transaction", too_deep)
    with pytest.raises(runner.NftError) as err:
        runner.Nft(PATH, FakeNft()).judge(document(objects()))
    assert str(err.value) == ("the ruleset nests deeper than mseg.fleet judges: pass the ruleset rendered by "
                              "mseg.fleet; nothing was changed")
