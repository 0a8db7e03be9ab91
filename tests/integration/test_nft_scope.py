"""The scope guarantee against real nft (issue 15, item 1): texts that nft reads differently from any pre-lexer
never reach the kernel; only the judged JSON form is loaded.

Each attack ran against the regex pre-lexer that nft/scope.py used to be: it accepted the first two (a quoted
string spanning lines hid ``flush ruleset``; an ``include`` inside a block) and the apply flushed the ruleset, or
echoed the first line of a root-only file into the error. Here the engine runs inside a network namespace that
holds a foreign table, and the test checks that nothing changed and nothing was echoed.
"""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                ".build", "collections"))

from netns import Fleet, available  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apply_driver.py")
SECRET = "SECRET-mseg-first-line"
FOREIGN = "table ip docker {\n\tchain keep {\n\t}\n}\n"
HEAD = "table inet mseg {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
# nft's quoted strings run across newlines, the old pre-lexer's stopped at the end of a line: nft closes the
# comment on the second line and runs "flush ruleset"; the pre-lexer saw a string there.
SPANNING = HEAD + ('\t\tcounter comment "spans\n'
                   '"; }; }; flush ruleset; table inet mseg { chain input { counter comment "\n'
                   '"\n\t}\n}\n')
ATTACKS = {
    "string spanning lines": SPANNING,
    "include inside a block": HEAD + '\t\tinclude "%(secret)s"\n\t}\n}\n',
    "flush ruleset": HEAD + "\t}\n}\nflush ruleset\n",
    "foreign table": HEAD + "\t}\n}\ndelete table ip docker\n",
    "define": "define fam = ip\n" + HEAD + "\t}\n}\nadd chain $fam docker evil\n",
    "nat chain": "table inet mseg {\n\tchain input {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                 "\t\tdnat ip to 10.0.0.1\n\t}\n}\n",
}


@pytest.fixture(name="secret")
def fixture_secret(tmp_path):
    path = tmp_path / "root-only.conf"
    path.write_text(SECRET + "\n")
    os.chmod(path, 0o600)
    return str(path)


def apply_in(fleet, tmp_path, content):
    proc = fleet.run("a", [sys.executable, DRIVER, str(tmp_path / "etc-mseg"), str(tmp_path / "units")],
                     input=content)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_attack_is_refused_before_anything_reaches_the_kernel(tmp_path, secret, attack):
    with Fleet(["a"]) as fleet:
        fleet.run("a", ["nft", "-f", "-"], input=FOREIGN)
        before = fleet.run("a", ["nft", "list", "ruleset"]).stdout
        result = apply_in(fleet, tmp_path, ATTACKS[attack] % {"secret": secret})
        assert result.get("failed"), result
        assert SECRET not in result["msg"]
        assert fleet.run("a", ["nft", "list", "ruleset"]).stdout == before
        assert not os.path.exists(tmp_path / "etc-mseg" / "ruleset.nft")


def test_the_attacks_are_real_for_nft_itself(tmp_path, secret):
    """Loaded as text, the spanning string flushes the foreign table and the include echoes the root-only file:
    the attack tests above refuse something nft would really have done."""
    with Fleet(["a"]) as fleet:
        fleet.run("a", ["nft", "-f", "-"], input=FOREIGN)
        fleet.run("a", ["nft", "-f", "-"], input=SPANNING)
        assert "docker" not in fleet.run("a", ["nft", "list", "ruleset"]).stdout
        loaded = fleet.run("a", ["nft", "-f", "-"], input=ATTACKS["include inside a block"] % {"secret": secret},
                           check=False)
        assert SECRET in loaded.stderr


def test_a_rendered_ruleset_loads_as_its_judged_json_and_lists_as_its_text(tmp_path):
    """Writer to reader: a golden ruleset goes through the checked load and the kernel holds what its text says."""
    golden = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit", "fixtures", "golden",
                          "web-01.nft")
    with open(golden, encoding="utf-8") as handle:
        text = handle.read()
    with Fleet(["a"]) as fleet:
        fleet.run("a", ["nft", "-f", "-"], input=FOREIGN)
        result = apply_in(fleet, tmp_path, text)
        assert result.get("changed"), result
        judged = fleet.run("a", ["nft", "-s", "list", "ruleset"]).stdout
        scratch = subprocess.run(["unshare", "--net", "sh", "-c", "nft -f - <<'EOF'\n%sEOF\nnft -f - && "
                                  "nft -s list ruleset" % FOREIGN], input=text, capture_output=True, text=True,
                                 check=True).stdout
        assert judged == scratch


def test_a_rendered_verdict_map_goes_through_the_checked_load(tmp_path):
    """Two consecutive allow rules on the same ports render as a verdict map whose elements jump to the rules' own
    chains: the judged JSON must add those chains before the map, or nft -j -f refuses the whole table (it did)."""
    policy = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": [
        {"id": 10, "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "db"}}, "ports": ["tcp/5432"]},
        {"id": 20, "from": {"tags": {"role": "app"}}, "to": {"tags": {"role": "db"}}, "ports": ["tcp/5432"]}]}
    hosts = {name: {"tags": {"role": name}, "groups": [name], "mode": "enforce",
                    "addresses": ["10.99.0.%d" % number, "fd00:99::%d" % number]}
             for number, name in enumerate(["web", "app", "db"], start=1)}
    text, _stats = render_plan(compile_fleet(policy, hosts).plans["db"])
    assert " vmap @" in text
    with Fleet(["a"]) as fleet:
        result = apply_in(fleet, tmp_path, text)
        assert result.get("changed"), result
        listed = fleet.run("a", ["nft", "list", "table", "inet", "mseg"]).stdout
        assert "vmap @" in listed and "jump allow_10_in" in listed and "jump allow_20_in" in listed, listed


# ------------------------------------------------------------------ the boot restore loads only the judged JSON


def restore(fleet, tmp_path, host):
    return fleet.run(host, ["sh", str(tmp_path / "etc-mseg" / "restore.sh")], check=False)


def test_boot_restore_loads_the_judged_json_and_fails_closed_on_a_truncated_file(tmp_path):
    """Issue 15, item 10: a truncated (or otherwise unverifiable) persisted ruleset is not loaded; the fail-closed
    table is, and it keeps the management port open while everything else is dropped."""
    content = ATTACKS["flush ruleset"].split("flush ruleset", maxsplit=1)[0].replace("policy accept", "policy drop")
    content = content.replace("\t}\n}\n", "\t\tct state established,related accept\n\t\ttcp dport 8080 accept\n\t}\n}\n")
    with Fleet(["a", "b"]) as fleet:
        assert apply_in(fleet, tmp_path, content).get("changed")
        proc = restore(fleet, tmp_path, "b")  # a "reboot": namespace b is fresh
        assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr
        assert fleet.probe("a", "b", 8080) == "connected" and fleet.probe("a", "b", 22) == "timeout"
        path = tmp_path / "etc-mseg" / "ruleset.json"
        text = path.read_text()
        path.write_text(text[:len(text) // 2])
        fleet.run("b", ["nft", "delete", "table", "inet", "mseg"])
        proc = restore(fleet, tmp_path, "b")
        assert proc.returncode == 1 and "is corrupt" in proc.stderr and "fail-closed" in proc.stderr
        listed = fleet.run("b", ["nft", "list", "table", "inet", "mseg"]).stdout
        assert "mode_failsafe" in listed
        assert fleet.probe("a", "b", 22) == "connected" and fleet.probe("a", "b", 8080, timeout=0.5) == "timeout"


def test_a_ruleset_persisted_by_the_previous_release_still_restores(tmp_path):
    """The previous release persisted ruleset.nft only (the format is unchanged) and no JSON form: the next apply of
    the same policy repairs the persisted copy without touching the live table, and the boot restore loads it."""
    with Fleet(["a", "b"]) as fleet:
        assert apply_in(fleet, tmp_path, ATTACKS["flush ruleset"].split("flush ruleset", maxsplit=1)[0]).get("changed")
        os.unlink(tmp_path / "etc-mseg" / "ruleset.json")  # the state an older release left behind
        result = apply_in(fleet, tmp_path, ATTACKS["flush ruleset"].split("flush ruleset", maxsplit=1)[0])
        assert result["changed"] and "persisted copy repaired" in result["msg"], result
        proc = restore(fleet, tmp_path, "b")
        assert proc.returncode == 0, proc.stderr
        assert fleet.run("b", ["nft", "-s", "list", "ruleset"]).stdout == \
            fleet.run("a", ["nft", "-s", "list", "ruleset"]).stdout


# ------------------------------------------------------ a ruleset in the JSON form: judged as it is, no scratch parse


def json_form(text):
    """``{"nftables": [...]}`` as nft lists ``text`` loaded in a scratch namespace: what a renderer that writes the
    JSON form gives the host."""
    return subprocess.run(["unshare", "--net", "sh", "-c", "nft -f - && nft -j list ruleset"], input=text,
                          capture_output=True, text=True, check=True).stdout


def golden_text():
    golden = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit", "fixtures", "golden",
                          "web-01.nft")
    with open(golden, encoding="utf-8") as handle:
        return handle.read()


def test_a_rendered_ruleset_in_the_json_form_loads_byte_identical_to_its_text(tmp_path):
    text = golden_text()
    with Fleet(["a", "b"]) as fleet:
        for host in ("a", "b"):
            fleet.run(host, ["nft", "-f", "-"], input=FOREIGN)
        as_text = fleet.run("a", [sys.executable, DRIVER, str(tmp_path / "text"), str(tmp_path / "u1")], input=text)
        as_json = fleet.run("b", [sys.executable, DRIVER, str(tmp_path / "json"), str(tmp_path / "u2")],
                            input=json_form(text))
        assert json.loads(as_text.stdout)["changed"] and json.loads(as_json.stdout)["changed"], as_json.stdout
        listed = [fleet.run(host, ["nft", "-s", "list", "ruleset"]).stdout for host in ("a", "b")]
        assert listed[0] == listed[1] and "table inet mseg" in listed[1] and "table ip docker" in listed[1]
        assert (tmp_path / "json" / "ruleset.json").read_text() == (tmp_path / "text" / "ruleset.json").read_text()
        again = fleet.run("b", [sys.executable, DRIVER, str(tmp_path / "json"), str(tmp_path / "u2")],
                          input=json_form(text))
        assert json.loads(again.stdout)["changed"] is False


TABLE = {"family": "inet", "name": "mseg"}
INPUT = {"family": "inet", "table": "mseg", "name": "input", "type": "filter", "hook": "input", "prio": 0,
         "policy": "accept"}
JSON_ATTACKS = {
    # nft reads a command list too: a flush or a delete of another table must never be loaded
    "flush ruleset": '{"nftables": [{"table": %s}, {"flush": {"ruleset": null}}]}' % json.dumps(TABLE),
    "foreign table": '{"nftables": [{"table": %s}, {"delete": {"table": {"family": "ip", "name": "docker"}}}]}'
                     % json.dumps(TABLE),
    # Python keeps the last of two equal keys; whatever nft would keep, the document is refused
    "duplicate key": '{"nftables": [{"table": {"family": "ip", "name": "docker", "family": "inet", "name": "mseg"}},'
                     ' {"chain": {"family": "ip", "table": "docker", "name": "keep", "table": "mseg",'
                     ' "family": "inet"}}]}',
    # an element that is an object (a timeout, a counter): a listing of a text never holds one
    "element object": json.dumps({"nftables": [{"table": TABLE}, {"set": {
        "family": "inet", "table": "mseg", "name": "r1_in_v4", "type": "ipv4_addr",
        "elem": [{"elem": {"val": "10.0.0.1", "timeout": 5}}]}}]}),
    "nat chain": json.dumps({"nftables": [{"table": TABLE}, {"chain": dict(INPUT, type="nat", hook="prerouting")}]}),
    "jump out of the contract": json.dumps({"nftables": [{"table": TABLE}, {"chain": INPUT}, {"rule": {
        "family": "inet", "table": "mseg", "chain": "input", "expr": [{"jump": {"target": "keep"}}]}}]}),
}


@pytest.mark.parametrize("attack", sorted(JSON_ATTACKS))
def test_a_json_attack_is_refused_before_anything_reaches_the_kernel(tmp_path, attack):
    with Fleet(["a"]) as fleet:
        fleet.run("a", ["nft", "-f", "-"], input=FOREIGN)
        before = fleet.run("a", ["nft", "list", "ruleset"]).stdout
        result = apply_in(fleet, tmp_path, JSON_ATTACKS[attack])
        assert result.get("failed") and "nothing was changed" in result["msg"], result
        assert fleet.run("a", ["nft", "list", "ruleset"]).stdout == before
        assert not os.path.exists(tmp_path / "etc-mseg" / "ruleset.nft")


def test_the_json_attacks_are_real_for_nft_itself():
    """Loaded by nft as they are, the command lists remove the foreign table: the tests above refuse what nft would
    really have done. (nft keeps the last of two equal keys, as Python does: the duplicate key is refused so that
    no reader of the document can see another object than the one judged.)"""
    with Fleet(["a"]) as fleet:
        for attack in ("flush ruleset", "foreign table"):
            fleet.run("a", ["nft", "-f", "-"], input=FOREIGN)
            fleet.run("a", ["nft", "-j", "-f", "-"], input=JSON_ATTACKS[attack])
            assert "docker" not in fleet.run("a", ["nft", "list", "ruleset"]).stdout, attack
