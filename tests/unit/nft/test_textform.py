"""The renderer's text read without nft (plugins/module_utils/nft/textform.py): each statement kind the renderer
writes becomes the JSON objects nft lists for it, every golden rendering is read, and whatever the module does not
read exactly as nft does is refused (None), so ``Nft.judge`` has nft parse it in a scratch namespace instead.

What nft itself lists for real rendered rulesets is compared in tests/integration/test_nft_textform_oracle.py."""

import glob
import os
import subprocess

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import build_transaction
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform, runner, textform
from ansible_collections.mseg.fleet.tests.unit.nft.fake import PATH, FakeNft

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "golden")
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "ipv6-icmp", 112: "vrrp"}
WHERE = {"family": "inet", "table": "mseg"}
HEAD = "table inet mseg {}\ndelete table inet mseg\n"
DECLARED = """table inet mseg {
\tcounter rule_7_in {
\t}
\tset mgmt_auto_v4 {
\t\ttype ipv4_addr . inet_service
\t}
\tset r7_in_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.1, 10.0.1.0/24 }
\t}
\tset r7_in_v6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\telements = { 2001:db8::/32, fd00::1 }
\t}
\tset sys_controller_connlimit_v4 {
\t\ttype ipv4_addr
\t\tflags dynamic
\t}
\tmap allow_7_in_v4 {
\t\ttype ipv4_addr : verdict
\t\tflags interval
\t\telements = { 10.0.0.0/30 : jump allow_7_in,
\t\t\t     10.0.0.4 : jump deny_7_in }
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
%s
\t}
\tchain allow_7_in {
\t\tcounter name "rule_7_in" accept comment "ID=7"
\t}
\tchain deny_7_in {
\t\tcounter name "rule_7_in" drop
\t}
}
"""
LIMITED = 'tcp dport 443 add @sys_controller_connlimit_v4 { ip saddr ct count over 3 } accept'


def text(*rules):
    """A transaction of the renderer's shape whose chain input holds ``rules``, then the connection limit (every
    set a rule adds to must be used)."""
    rules = [rule for rule in rules if rule != LIMITED] + [LIMITED]
    return HEAD + DECLARED % "\n".join("\t\t" + rule for rule in rules)


def translated(*rules):
    found = textform.objects(text(*rules), PROTOCOLS)
    assert found is not None, rules
    return found


def rule_exprs(found, chain="input"):
    return [item["rule"]["expr"] for item in found if "rule" in item and item["rule"]["chain"] == chain]


def match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def payload(protocol, field):
    return {"payload": {"protocol": protocol, "field": field}}


ACCEPT = {"accept": None}
# One rule per statement kind the renderer writes, and the statements nft lists for it.
RULES = {
    "ct state established,related accept": [match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                                            ACCEPT],
    'ct state invalid counter name "rule_7_in" drop': [match({"ct": {"key": "state"}}, "invalid", "in"),
                                                       {"counter": "rule_7_in"}, {"drop": None}],
    'iif "lo" accept': [match({"meta": {"key": "iif"}}, "lo"), ACCEPT],
    'oif "lo" accept': [match({"meta": {"key": "oif"}}, "lo"), ACCEPT],
    "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept": [
        match(payload("icmpv6", "type"), {"set": ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
                                                  "nd-neighbor-advert"]}), ACCEPT],
    'ip saddr . tcp dport @mgmt_auto_v4 counter name "rule_7_in" accept comment "management (controller)"': [
        match({"concat": [payload("ip", "saddr"), payload("tcp", "dport")]}, "@mgmt_auto_v4"),
        {"counter": "rule_7_in"}, ACCEPT],
    "tcp dport 22 ip saddr @r7_in_v4 accept": [match(payload("tcp", "dport"), 22),
                                               match(payload("ip", "saddr"), "@r7_in_v4"), ACCEPT],
    "udp dport 5000-5010 ip6 saddr @r7_in_v6 accept": [
        match(payload("udp", "dport"), {"range": [5000, 5010]}), match(payload("ip6", "saddr"), "@r7_in_v6"), ACCEPT],
    "tcp dport { 8000-8010, 8080 } accept": [match(payload("tcp", "dport"),
                                                   {"set": [{"range": [8000, 8010]}, 8080]}), ACCEPT],
    "meta l4proto 1 meta nfproto ipv4 accept": [match({"meta": {"key": "l4proto"}}, "icmp"),
                                                match({"meta": {"key": "nfproto"}}, "ipv4"), ACCEPT],
    "meta l4proto { 47, 50-51, 112 } ip saddr @r7_in_v4 accept": [
        match({"meta": {"key": "l4proto"}}, {"set": ["gre", {"range": [50, 51]}, "vrrp"]}),
        match(payload("ip", "saddr"), "@r7_in_v4"), ACCEPT],
    "tcp dport 22 ip daddr 10.77.0.5 accept": [match(payload("tcp", "dport"), 22),
                                               match(payload("ip", "daddr"), "10.77.0.5"), ACCEPT],
    "tcp dport 8080 ip saddr vmap @allow_7_in_v4": [
        match(payload("tcp", "dport"), 8080),
        {"vmap": {"key": payload("ip", "saddr"), "data": "@allow_7_in_v4"}}],
    'ip saddr @r7_in_v4 jump deny_7_in comment "ID=7"': [match(payload("ip", "saddr"), "@r7_in_v4"),
                                                         {"jump": {"target": "deny_7_in"}}],
    'limit rate 10/second burst 20 packets log prefix "[MSEG-DROP] ID=7 " log group 2710 prefix "[MSEG-DROP] ID=7 "': [
        {"limit": {"rate": 10, "burst": 20, "per": "second"}}, {"log": {"prefix": "[MSEG-DROP] ID=7 "}},
        {"log": {"prefix": "[MSEG-DROP] ID=7 ", "group": 2710}}],
    LIMITED: [match(payload("tcp", "dport"), 443),
              {"set": {"op": "add", "elem": payload("ip", "saddr"), "set": "@sys_controller_connlimit_v4",
                       "stmt": [{"ct count": {"val": 3, "inv": True}}]}}, ACCEPT],
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_the_renderer_writes_becomes_what_nft_lists(rule):
    found = translated(rule)
    assert rule_exprs(found)[0] == RULES[rule]


def test_the_table_its_objects_and_their_order_are_those_nft_lists():
    found = translated('ip saddr @r7_in_v4 jump deny_7_in comment "ID=7"')
    assert [list(item)[0] for item in found] == ["table", "counter", "set", "set", "set", "set", "map", "chain",
                                                 "chain", "chain", "rule", "rule", "rule", "rule"]
    bodies = {item[list(item)[0]].get("name"): item[list(item)[0]] for item in found if "rule" not in item}
    assert bodies["mseg"] == {"family": "inet", "name": "mseg"}
    assert bodies["rule_7_in"] == dict(WHERE, name="rule_7_in")
    assert bodies["mgmt_auto_v4"] == dict(WHERE, name="mgmt_auto_v4", type=["ipv4_addr", "inet_service"])
    assert bodies["r7_in_v4"] == dict(WHERE, name="r7_in_v4", type="ipv4_addr", flags=["interval"],
                                      elem=["10.0.0.1", {"prefix": {"addr": "10.0.1.0", "len": 24}}])
    assert bodies["r7_in_v6"]["elem"] == [{"prefix": {"addr": "2001:db8::", "len": 32}}, "fd00::1"]
    # nft 1.0.6 lists a set a rule adds to with the size it gave it, and without its dynamic flag
    assert bodies["sys_controller_connlimit_v4"] == dict(WHERE, name="sys_controller_connlimit_v4",
                                                         type="ipv4_addr", size=65535)
    assert bodies["allow_7_in_v4"] == dict(WHERE, name="allow_7_in_v4", type="ipv4_addr", map="verdict",
                                           flags=["interval"], elem=[
                                               [{"prefix": {"addr": "10.0.0.0", "len": 30}},
                                                {"jump": {"target": "allow_7_in"}}],
                                               ["10.0.0.4", {"jump": {"target": "deny_7_in"}}]])
    assert bodies["input"] == dict(WHERE, name="input", type="filter", hook="input", prio=0, policy="accept")
    assert bodies["allow_7_in"] == dict(WHERE, name="allow_7_in")
    rules = [item["rule"] for item in found if "rule" in item]
    assert rules[0] == dict(WHERE, chain="input", comment="ID=7", expr=RULES[
        'ip saddr @r7_in_v4 jump deny_7_in comment "ID=7"'])
    assert rules[2] == dict(WHERE, chain="allow_7_in", comment="ID=7",
                            expr=[{"counter": "rule_7_in"}, ACCEPT])


def test_the_management_elements_the_apply_adds_join_their_set():
    content = build_transaction(text(), [("192.0.2.7", 22), ("192.0.2.8", 2222)])
    found = textform.objects(content, PROTOCOLS)
    auto = [item["set"] for item in found if item.get("set", {}).get("name") == "mgmt_auto_v4"][0]
    assert auto["elem"] == [{"concat": ["192.0.2.7", 22]}, {"concat": ["192.0.2.8", 2222]}]


def test_a_removal_leaves_no_table():
    assert textform.objects(HEAD, PROTOCOLS) == []


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GOLDEN, "*.nft"))), ids=os.path.basename)
def test_every_golden_rendering_is_read_and_keeps_to_the_contract(path):
    with open(path, encoding="utf-8") as handle:
        content = build_transaction(handle.read(), [("10.255.0.7", 22)])
    found = textform.objects(content, PROTOCOLS)
    assert found is not None
    assert jsonform.check(found, scratch=False) == found
    assert jsonform.counts(found)["tables"] == 1


# What the module leaves to nft: each text is refused, so nft parses it in a scratch namespace.
REFUSED = {
    "unknown statement": text("reject"),
    "log level": text('log level warn prefix "[MSEG-DROP] ID=7 "'),
    "th dport": text("th dport 22 accept"),
    "anonymous counter": text("counter accept"),
    "undeclared counter": text('counter name "rule_8_in" accept'),
    "undeclared set": text("ip saddr @r8_in_v4 accept"),
    "set of the other family": text("ip saddr @r7_in_v6 accept"),
    "a dynamic set looked up": text("ip saddr @sys_controller_connlimit_v4 accept"),
    "jump to a base chain": text("jump input"),
    "jump to an undeclared chain": text("jump deny_9_in"),
    "a statement after the verdict": text("accept counter"),
    "dependency nft hides": text("meta l4proto 6 tcp dport 22 accept"),
    "nfproto with an address": text("meta nfproto ipv4 ip saddr 10.0.0.1 accept"),
    "two families": text("ip saddr 10.0.0.1 ip6 daddr fd00::1 accept"),
    "anonymous address set": text("ip daddr { 10.0.0.1, 10.0.0.2 } accept"),
    "inline prefix": text("ip daddr 10.0.0.0/24 accept"),
    "one-member anonymous set": text("tcp dport { 22 } accept"),
    "adjacent ports nft merges": text("tcp dport { 80-81, 82 } accept"),
    "ports out of order": text("tcp dport { 443, 80 } accept"),
    "a protocol the database lacks": text("meta l4proto 253 accept"),
    "default burst": text('limit rate 10/second burst 5 packets log prefix "[MSEG-DROP] ID=7 "'),
    "double space": text("ct state  invalid drop"),
    "semicolon": text("accept; flush ruleset"),
    "comment trick: a string spanning lines": text('accept comment "spans', '"; flush ruleset; "'),
    "comment trick: a hash inside a rule": text("accept # flush ruleset"),
    "comment trick: a quote inside a comment": text('accept comment "a"b"'),
    "carriage return": text("accept\rflush ruleset"),
    "backslash": "# a comment \\\n" + text(),
    "non-ASCII": text('accept comment "caf\u00e9"'),
    "broken braces: table not closed": text().rstrip("}\n") + "\n",
    "broken braces: chain not closed": HEAD + "table inet mseg {\n\tchain input {\n\t\taccept\n",
    "broken braces: elements not closed": text().replace("10.0.1.0/24 }", "10.0.1.0/24"),
    "injected second table": text() + "table ip docker {\n\tchain keep {\n\t}\n}\n",
    "table of another family": HEAD + "table ip mseg {\n}\n",
    "flush ruleset": text() + "flush ruleset\n",
    "delete of another table": text() + "delete table ip docker\n",
    "include": text() + 'include "/etc/shadow"\n',
    "define": "define fam = ip\n" + text(),
    "add rule": text() + "add rule inet mseg input drop\n",
    "a second block without delete": text() + "table inet mseg {\n}\n",
    "delete without the table": "delete table inet mseg\n",
    "elements out of order": text().replace("10.0.0.1, 10.0.1.0/24", "10.0.1.0/24, 10.0.0.1"),
    "overlapping elements": text().replace("10.0.0.1, 10.0.1.0/24", "10.0.0.0/8, 10.0.1.0/24"),
    "a /32 element": text().replace("10.0.0.1, 10.0.1.0/24", "10.0.0.1/32, 10.0.1.0/24"),
    "host bits in a prefix": text().replace("10.0.1.0/24", "10.0.1.1/24"),
    "an IPv6 spelling nft does not print": text().replace("fd00::1", "fd00:0::1"),
    "an IPv4-mapped address": text().replace("fd00::1", "::ffff:10.0.0.1"),
    "set size": text().replace("\t\tflags dynamic\n", "\t\tsize 65535\n\t\tflags dynamic\n"),
    "elements of a hash set": text().replace("inet_service\n", "inet_service\n\t\telements = { 10.0.0.1 . 22 }\n"),
    "a dynamic set no rule adds to": HEAD + DECLARED % "\t\taccept",
    "a name outside the contract": text().replace("deny_7_in", "evil_chain"),
    "add element to an undeclared set": text() + "add element inet mseg mgmt_auto_v9 { 10.0.0.1 . 22 }\n",
    "add element of the other family": text() + "add element inet mseg mgmt_auto_v4 { fd00::1 . 22 }\n",
    "a statement in the counter block": text().replace("rule_7_in {\n", "rule_7_in {\n\t\tpackets 1 bytes 2\n"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_it_does_not_read_exactly_is_left_to_nft(case):
    assert textform.objects(REFUSED[case], PROTOCOLS) is None


def test_the_base_text_of_the_refusals_is_read():
    """Each refusal above is the text() that is read, with one thing changed."""
    assert textform.objects(text(), PROTOCOLS) is not None


def test_without_a_protocol_database_a_protocol_is_left_to_nft():
    assert textform.objects(text("meta l4proto 17 accept"), None) is None
    assert textform.objects(text("meta l4proto 17 accept"), PROTOCOLS) is not None


def test_protocol_names_are_the_first_entry_of_the_file(tmp_path):
    path = tmp_path / "protocols"
    path.write_text("# comment\nip\t0\tIP\nicmp 1 ICMP # x\nICMP-again 1\nvrrp\t112\tVRRP\n", encoding="ascii")
    assert textform.protocol_names(str(path)) == {0: "ip", 1: "icmp", 112: "vrrp"}
    assert textform.protocol_names(str(tmp_path / "missing")) is None


def test_the_release_is_read_from_nft_version():
    assert textform.nft_release("nftables v1.0.6 (Lester Gooch #5)\n") == "1.0.6"
    assert textform.nft_release("nftables v1.1.1 (Commodore Bullmoose #2)") == "1.1.1"
    assert textform.nft_release("something else") is None


class VersionedFake(FakeNft):
    """The fake nft, answering ``nft --version`` with ``release``."""

    def __init__(self, release):
        super().__init__()
        self.release = release

    def __call__(self, argv, input=None, **kwargs):
        if list(argv[1:]) == ["--version"]:
            self.calls.append((list(argv), input))
            return subprocess.CompletedProcess(argv, 0, "nftables v%s (test)\n" % self.release, "")
        return super().__call__(argv, input=input, **kwargs)


def scratch_runs(fake):
    return [argv for argv, _input in fake.calls if os.path.basename(argv[0]) == "unshare"]


def test_judge_loads_the_translation_without_a_scratch_parse():
    fake = VersionedFake(textform.LISTED_BY[0])
    content = text('ip saddr @r7_in_v4 jump deny_7_in comment "ID=7"')
    nft = runner.Nft(PATH, fake)
    document = nft.judge(content, require_table=True)
    assert not scratch_runs(fake)
    assert document == jsonform.transaction(textform.objects(content, textform.protocol_names()))
    assert nft.counts(content) == {"tables": 1, "rules": 4, "sets": 5, "elements": 6}


def golden(name="app-01"):
    with open(os.path.join(GOLDEN, name + ".nft"), encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.parametrize("release, content", [
    ("0.9.8", golden()),  # a release whose listing the module does not write
    (textform.LISTED_BY[0], golden().replace("established,related accept", "established,related reject")),
])
def test_judge_falls_back_to_the_scratch_parse(release, content):
    fake = VersionedFake(release)
    runner.Nft(PATH, fake).judge(content)
    assert len(scratch_runs(fake)) == 1


def test_translate_false_always_parses_in_a_scratch_namespace():
    fake = VersionedFake(textform.LISTED_BY[0])
    runner.Nft(PATH, fake, translate=False).judge(golden())
    assert len(scratch_runs(fake)) == 1 and not [argv for argv, _input in fake.calls if "--version" in argv]


def test_the_contract_judges_a_translation_as_it_judges_nft_s_listing():
    """A text the module reads but the contract refuses (a chain on another hook) fails with the contract's
    message, without a scratch parse."""
    fake = VersionedFake(textform.LISTED_BY[0])
    content = text().replace("hook input priority", "hook output priority")
    with pytest.raises(MsegError) as err:
        runner.Nft(PATH, fake).judge(content)
    assert "chain input is a filter chain on hook output" in str(err.value)
    assert not scratch_runs(fake)


@pytest.mark.skipif(not os.path.exists(PATH), reason="the cache is keyed by the nft binary's inode: needs %s" % PATH)
def test_the_release_is_asked_once_per_binary_and_runner():
    fake = VersionedFake(textform.LISTED_BY[0])
    runner.Nft(PATH, fake).judge(golden())
    runner.Nft(PATH, fake).judge(golden("db-01"))
    assert [argv for argv, _input in fake.calls if "--version" in argv] == [[PATH, "--version"]]
    assert not scratch_runs(fake)
