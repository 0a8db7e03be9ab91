"""The apply engine's recorded state and its one transaction, against real nftables in network namespaces.

* the "nothing changed since" shortcut trusts the recorded state only in the network namespace that recorded it,
  even when a fresh namespace gets the recorded one's inode back and reaches the same generation id (issue 16);
* a load the kernel refuses leaves the whole live ruleset byte-identical: the transaction is all-or-nothing, so the
  apply path runs no separate ``nft -c`` pass;
* an apply whose load was the only commit records the document it loaded instead of a listing, and later runs
  still tell that table from a hand edit.
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

from test_nft_apply import FIREWALLD_LIKE, ruleset  # noqa: E402  (the contract-shaped ruleset of the module tests)

# Runs the engine in the namespace it is started in; a runner that appends to the document of the live load
# (``nft -j -f -``, never the scratch parse) a set the kernel refuses at commit (two elements in a set of size 1),
# and that records every argv it ran. Prints the error (or the result) and the argv list as JSON.
_FAULTY = r"""
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[3])
from ansible_collections.mseg.fleet.plugins.module_utils.apply.engine import Request, apply
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft
ran = []
def runner(argv, input=None, **kwargs):
    ran.append(list(argv))
    if argv[-3:] == ["-j", "-f", "-"] and os.path.basename(argv[0]) == "nft":
        document = json.loads(input)
        document["nftables"].append({"add": {"set": {"family": "inet", "table": "mseg", "name": "r9_in_v4",
                                                     "type": "ipv4_addr", "size": 1,
                                                     "elem": ["192.0.2.1", "192.0.2.2"]}}})
        input = json.dumps(document)
    return subprocess.run(argv, input=input, **kwargs)
try:
    out = apply(Request(sys.stdin.read(), "present", state_dir=sys.argv[1], unit_dir=sys.argv[2]),
                Nft(runner=runner))
except MsegError as exc:
    out = {"failed": True, "msg": str(exc)}
print(json.dumps({"result": out, "ran": ran}))
"""


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


def test_a_load_the_kernel_refuses_leaves_the_live_ruleset_byte_identical(tmp_path):
    state_dir, unit_dir = str(tmp_path / "etc-mseg"), str(tmp_path / "units")
    with Fleet(["a"]) as fleet:
        fleet.run("a", ["nft", "-f", "-"], input=FIREWALLD_LIKE)
        assert apply_in(fleet, "a", ruleset(), state_dir, unit_dir)["changed"] is True
        before = live(fleet, "a")
        files = {name: open(os.path.join(state_dir, name)).read() for name in sorted(os.listdir(state_dir))
                 if name != "lock"}
        proc = fleet.run("a", [sys.executable, "-c", _FAULTY, state_dir, unit_dir, COLLECTIONS],
                         input=ruleset(port=9090))
        out = json.loads(proc.stdout)
        assert out["result"].get("failed") and "the kernel kept the previous one" in out["result"]["msg"], out
        assert "Traceback" not in out["result"]["msg"]
        assert live(fleet, "a") == before  # every table, every counter: nothing of the new table is live
        assert {name: open(os.path.join(state_dir, name)).read() for name in sorted(os.listdir(state_dir))
                if name != "lock"} == files  # the record, backup and persisted copy still describe that table
        loads = [argv for argv in out["ran"] if os.path.basename(argv[0]) == "nft" and "-f" in argv]
        assert loads == [loads[0]] and "-c" not in loads[0], "the apply ran more than the one load: %s" % loads
        # and the next apply of the same (valid) ruleset puts it in place
        assert apply_in(fleet, "a", ruleset(port=9090), state_dir, unit_dir)["changed"] is True
        assert "dport 9090" in live(fleet, "a", ("-s", "list", "table", "inet", "mseg"))


def test_check_mode_still_asks_the_kernel(tmp_path):
    """Check mode loads nothing, so it keeps ``nft -c``: a ruleset the kernel would refuse fails there too."""
    code = r"""
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.mseg.fleet.plugins.module_utils.apply.engine import Request, apply
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft
ran = []
def runner(argv, input=None, **kwargs):
    ran.append(list(argv))
    return subprocess.run(argv, input=input, **kwargs)
res = apply(Request(sys.stdin.read(), "present", state_dir=sys.argv[2], unit_dir=sys.argv[3], check_mode=True),
            Nft(runner=runner))
print(json.dumps({"result": res, "ran": ran}))
"""
    with Fleet(["a"]) as fleet:
        proc = fleet.run("a", [sys.executable, "-c", code, COLLECTIONS, str(tmp_path / "s"), str(tmp_path / "u")],
                         input=ruleset())
        out = json.loads(proc.stdout)
        assert out["result"]["changed"] is True
        assert any(argv[-4:] == ["-j", "-c", "-f", "-"] for argv in out["ran"]), out["ran"]
        assert live(fleet, "a", ("list", "table", "inet", "mseg")) is None
        assert not os.path.exists(str(tmp_path / "s"))


def test_an_apply_that_was_the_only_commit_records_no_listing_and_is_recognised_later(tmp_path):
    """The load was the only commit (generation id + 1): nothing is listed to record it, the counts come from the
    judged document, and after another table's commit the live table's JSON listing is still recognised as the
    loaded document (real nft lists it back into that document), so the run is unchanged and records the listing."""
    state_dir, unit_dir = str(tmp_path / "etc-mseg"), str(tmp_path / "units")
    with Fleet(["a"]) as fleet:
        res = apply_in(fleet, "a", ruleset(extra=300), state_dir, unit_dir)
        listed = live(fleet, "a", ("-s", "list", "table", "inet", "mseg"))
        assert res["changed"] and (res["rules"], res["sets"], res["elements"]) == (8, 3, 301), res
        assert not os.path.exists(os.path.join(state_dir, "live.nft"))
        # a hand edit before anything listed the table: its JSON listing is not the loaded document, so drift
        fleet.run("a", ["nft", "add", "rule", "inet", "mseg", "input", "tcp", "dport", "7", "accept"])
        res = apply_in(fleet, "a", ruleset(extra=300), state_dir, unit_dir)
        assert res["changed"] and res["drift"], res
        assert live(fleet, "a", ("-s", "list", "table", "inet", "mseg")) == listed
        # another table's commit: the table is still the loaded document, unchanged, and its listing is recorded
        fleet.run("a", "nft add table ip other && nft delete table ip other")
        res = apply_in(fleet, "a", ruleset(extra=300), state_dir, unit_dir)
        assert res["changed"] is False and res["msg"] == "table inet mseg already matches", res
        assert open(os.path.join(state_dir, "live.nft")).read() == listed
