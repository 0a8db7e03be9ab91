"""The apply engine's recorded state, against real nftables in network namespaces.

* the "nothing changed since" shortcut trusts the recorded state only in the network namespace that recorded it,
  even when a fresh namespace gets the recorded one's inode back and reaches the same generation id (issue 16).
"""

import json
import os
import sys

import pytest

from netns import Fleet, available

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "apply_driver.py")
COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".build", "collections")
sys.path.insert(0, HERE)

from test_nft_apply import ruleset  # noqa: E402  (the contract-shaped ruleset of the module tests)

def apply_in(fleet, host, text, state_dir, unit_dir):
    proc = fleet.run(host, [sys.executable, DRIVER, state_dir, unit_dir], input=text)
    return json.loads(proc.stdout)


def live(fleet, host, what=("list", "ruleset")):
    """The live ruleset (or ``what``) as nft lists it, counters included; None when nft cannot list it."""
    proc = fleet.run(host, ["nft"] + list(what), check=False)
    return proc.stdout if proc.returncode == 0 else None


def genid(fleet, host):
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner\n"
            "print(runner.ruleset_genid())" % COLLECTIONS)
    return int(fleet.run(host, [sys.executable, "-c", code]).stdout)


def netns_inode(fleet, host):
    return int(fleet.run(host, ["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout)


def test_a_fresh_namespace_is_never_taken_for_the_recorded_one(tmp_path):
    """Issue 16: a fresh namespace that got the recorded namespace's inode back and reached the same generation id
    was answered "table inet mseg already matches" while it held no table at all."""
    state_dir, unit_dir = str(tmp_path / "etc-mseg"), str(tmp_path / "units")
    with Fleet(["a"]) as first:
        res = apply_in(first, "a", ruleset(), state_dir, unit_dir)
        assert res["changed"] is True, res
        recorded_inode = netns_inode(first, "a")
    state_file = os.path.join(state_dir, "state.json")
    state = json.loads(open(state_file).read())
    with Fleet(["a"]) as fresh:
        assert live(fresh, "a", ("list", "table", "inet", "mseg")) is None
        while genid(fresh, "a") < state["genid"]:  # one commit in another table: it bumps the id as any commit
            fresh.run("a", "if nft list table ip bump >/dev/null 2>&1; then nft delete table ip bump; "
                      "else nft add table ip bump; fi")
        assert genid(fresh, "a") == state["genid"], "cannot reach the recorded generation id in a fresh namespace"
        # The kernel hands a freed namespace inode to the next namespace; make sure this one has it, whatever other
        # namespaces were created meanwhile: wherever the recorded state names the old inode, it names this one.
        inode = netns_inode(fresh, "a")
        recycled = {key: value.replace("/%d" % recorded_inode, "/%d" % inode)
                    if isinstance(value, str) and value.endswith("/%d" % recorded_inode) else value
                    for key, value in state.items()}
        with open(state_file, "w") as handle:
            json.dump(recycled, handle)
        res = apply_in(fresh, "a", ruleset(), state_dir, unit_dir)
        assert res.get("changed") is True and "already matches" not in res["msg"], res
        assert "r1024_in_v4" in live(fresh, "a", ("-s", "list", "table", "inet", "mseg"))
