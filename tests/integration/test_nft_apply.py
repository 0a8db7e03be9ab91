"""mseg.fleet.nft_apply through real ansible-playbook, against real nftables in network namespaces.

Each test gets a fleet of namespaces (netns.py); the playbook runs inside host "a" with a local
connection, so every nft call of the module acts on that namespace only. State and unit
directories live in a per-test temporary directory, never in /etc.
"""

import fcntl
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from netns import CONNECTED, TIMEOUT, Fleet, available

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
VENV_BIN = os.path.dirname(sys.executable)
sys.path.insert(0, COLLECTIONS)
from ansible_collections.mseg.fleet.plugins.module_utils.apply import confirmed  # noqa: E402  (plain Python)
from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import PREAMBLE  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import Paths  # noqa: E402

DOCKER_LIKE = """
table ip nat {
    chain DOCKER {
        iifname "docker0" counter return
    }
    chain PREROUTING {
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local counter jump DOCKER
    }
    chain POSTROUTING {
        type nat hook postrouting priority srcnat; policy accept;
        oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade
    }
}
table ip filter {
    chain DOCKER-USER {
        counter return
    }
    chain FORWARD {
        type filter hook forward priority filter; policy drop;
        counter jump DOCKER-USER
    }
}
"""

FIREWALLD_LIKE = """
table inet firewalld {
    set allowed {
        type ipv4_addr
        flags interval
        elements = { 198.51.100.0/24 }
    }
    chain filter_INPUT {
        type filter hook input priority filter + 10; policy accept;
        ct state established,related accept
        ip saddr @allowed tcp dport 9999 accept
    }
}
"""


def ruleset(peers=("10.77.0.0/24",), port=8080, policy="drop", extra=0, label="t"):
    """A ruleset shaped like the render contract: management sets, a peer set, input/output chains."""
    elements = list(peers) + ["100.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(extra)]
    return """#!/usr/sbin/nft -f
# mseg.fleet ruleset for a: mode=enforce policy=%s
table inet mseg {}
delete table inet mseg
table inet mseg {
    set mgmt_auto_v4 {
        type ipv4_addr . inet_service
    }
    set mgmt_auto_v6 {
        type ipv6_addr . inet_service
    }
    set r1024_in_v4 {
        type ipv4_addr
        flags interval
        elements = { %s }
    }
    counter mgmt_in {
    }
    chain input {
        type filter hook input priority filter; policy %s;
        ct state established,related accept
        ct state invalid drop
        iif "lo" accept
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept
        ip saddr . tcp dport @mgmt_auto_v4 counter name "mgmt_in" accept
        ip6 saddr . tcp dport @mgmt_auto_v6 counter name "mgmt_in" accept
        ip saddr @r1024_in_v4 tcp dport %d counter accept comment "ID=1024"
        counter log prefix "[MSEG-DROP] ID=0 " drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
    }
}
""" % (label, ", ".join(elements), policy, port)


@pytest.fixture
def fleet():
    with Fleet(["a", "b"]) as f:
        yield f


@pytest.fixture
def dirs(tmp_path):
    return {"state_dir": str(tmp_path / "etc-mseg"), "unit_dir": str(tmp_path / "units"), "tmp": tmp_path}


def play(fleet, dirs, args, check=False, diff=False, env=None, host="a", wrapper=None):
    """Run one nft_apply task with ansible-playbook inside ``host``; return (rc, task result)."""
    tmp = dirs["tmp"]
    module_args = dict({"state_dir": dirs["state_dir"], "unit_dir": dirs["unit_dir"]}, **args)
    (tmp / "args.json").write_text(json.dumps({"nft_args": module_args}))
    (tmp / "inventory.ini").write_text("%s ansible_connection=local ansible_python_interpreter=%s\n"
                                       % (host, sys.executable))
    (tmp / "play.yml").write_text(
        "- name: Apply\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Apply the ruleset\n      mseg.fleet.nft_apply: \"{{ nft_args }}\"\n")
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "ANSIBLE_"))}
    run_env.update(ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
                   ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"), ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"),
                   ANSIBLE_HOST_KEY_CHECKING="False", PATH=VENV_BIN + os.pathsep + os.environ["PATH"])
    run_env.update(env or {})
    argv = ["ansible-playbook", "-i", str(tmp / "inventory.ini"), str(tmp / "play.yml"), "-e", "@" + str(tmp / "args.json")]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if wrapper:
        argv = wrapper(argv)
    proc = subprocess.run(fleet.exec_prefix(host) + argv, capture_output=True, text=True, env=run_env, timeout=300,
                          check=False)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible-playbook output is not JSON (rc %d): %s %s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    return proc.returncode, out["plays"][0]["tasks"][0]["hosts"][host]


def listing(fleet, host="a", table="inet mseg"):
    proc = fleet.run(host, ["nft", "-s", "list", "table"] + table.split(), check=False)
    return proc.stdout if proc.returncode == 0 else None


# ------------------------------------------------------------------ 1. scope: foreign tables untouched


def test_foreign_tables_stay_byte_identical(fleet, dirs):
    fleet.run("a", ["nft", "-f", "-"], input=DOCKER_LIKE + FIREWALLD_LIKE)
    foreign = ["ip nat", "ip filter", "inet firewalld"]
    before = {t: fleet.run("a", ["nft", "list", "table"] + t.split()).stdout for t in foreign}

    rc, res = play(fleet, dirs, {"content": ruleset()})
    assert rc == 0 and res["changed"], res
    rc, res = play(fleet, dirs, {"content": ruleset(port=9090)})
    assert rc == 0 and res["changed"], res
    rc, res = play(fleet, dirs, {"state": "absent"})
    assert rc == 0 and res["changed"], res
    assert listing(fleet) is None

    after = {t: fleet.run("a", ["nft", "list", "table"] + t.split()).stdout for t in foreign}
    assert after == before


@pytest.mark.parametrize("statement, why", [
    ("flush ruleset", "it removes or changes tables other than inet mseg"),
    ("delete table ip nat", "nft rejected the ruleset: content:"),
    ("table ip filter {\n chain x {\n }\n}", "table ip filter is outside table inet mseg"),
    ("add rule inet firewalld filter_INPUT accept", "nft rejected the ruleset: content:"),
    ('include "/etc/nftables.conf"', "nothing was changed"),
])
def test_content_outside_inet_mseg_is_refused_before_nft(fleet, dirs, statement, why):
    """The scratch namespace holds no foreign table: whatever names one fails there or is judged outside inet mseg
    (tests/integration/test_nft_scope.py holds the attacks a pre-lexer missed)."""
    fleet.run("a", ["nft", "-f", "-"], input=FIREWALLD_LIKE)
    before = fleet.run("a", ["nft", "list", "ruleset"]).stdout
    rc, res = play(fleet, dirs, {"content": ruleset() + statement + "\n"})
    assert rc != 0 and res["failed"]
    assert why in res["msg"], res["msg"]
    assert fleet.run("a", ["nft", "list", "ruleset"]).stdout == before


# ------------------------------------------------------------------ 2. idempotency, drift, check, diff


def test_idempotent_and_enforced_by_packets(fleet, dirs):
    rc, res = play(fleet, dirs, {"content": ruleset()})
    assert rc == 0 and res["changed"] and not res["drift"], res
    rc, res = play(fleet, dirs, {"content": ruleset()})
    assert rc == 0 and res["changed"] is False, res
    assert fleet.probe("b", "a", 8080) == CONNECTED
    assert fleet.probe("b", "a", 9090, timeout=0.5) == TIMEOUT


DRIFTS = [  # a hand edit of the live table, and what the diff's before side must show
    ("add rule inet mseg input tcp dport 9999 accept", "tcp dport 9999 accept"),
    ("add element inet mseg r1024_in_v4 { 192.0.2.77 }", "192.0.2.77"),
    ("delete table inet mseg", None),
]


def test_drift_is_detected_shown_and_corrected(fleet, dirs):
    play(fleet, dirs, {"content": ruleset()})
    applied = listing(fleet)
    for edit, shows in DRIFTS:
        fleet.run("a", ["nft", edit])
        drifted = listing(fleet)
        assert drifted != applied

        rc, res = play(fleet, dirs, {"content": ruleset()}, check=True, diff=True)
        assert rc == 0 and res["changed"] and res["drift"], (edit, res)
        assert listing(fleet) == drifted, "check mode changed the live table"
        assert res["diff"]["after"] == applied
        assert res["diff"]["before"] == (drifted or "")
        if shows:
            assert shows in res["diff"]["before"] and shows not in res["diff"]["after"]

        rc, res = play(fleet, dirs, {"content": ruleset()})
        assert rc == 0 and res["changed"] and res["drift"] and "corrected drift" in res["msg"], (edit, res)
        assert listing(fleet) == applied
    rc, res = play(fleet, dirs, {"content": ruleset()})
    assert res["changed"] is False


def test_check_mode_changes_nothing_and_diff_has_no_counters(fleet, dirs):
    play(fleet, dirs, {"content": ruleset()})
    fleet.probe("b", "a", 8080)  # make counters non-zero
    assert re.search(r"dport 8080 counter packets [1-9]", fleet.run("a", "nft list table inet mseg").stdout)
    persisted = open(os.path.join(dirs["state_dir"], "ruleset.nft")).read()
    live = listing(fleet)

    rc, res = play(fleet, dirs, {"content": ruleset(port=9090)}, check=True, diff=True)
    assert rc == 0 and res["changed"] and not res["drift"], res
    assert listing(fleet) == live
    assert open(os.path.join(dirs["state_dir"], "ruleset.nft")).read() == persisted
    assert "tcp dport 8080" in res["diff"]["before"] and "tcp dport 9090" in res["diff"]["after"]
    assert "packets" not in res["diff"]["before"] + res["diff"]["after"]
    assert res["diff"]["after"].startswith("table inet mseg {")


# ------------------------------------------------------------------ 3. backup, persistence, boot restore


def test_backup_persist_and_boot_restore(fleet, dirs):
    play(fleet, dirs, {"content": ruleset()})
    first = listing(fleet)
    rc, res = play(fleet, dirs, {"content": ruleset(port=9090)})
    assert rc == 0 and res["changed"]
    state_dir = dirs["state_dir"]

    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    # live.nft only once a listing was taken: an apply whose load was the only commit records none
    for name in ("ruleset.nft", "ruleset.json", "ruleset.prev.nft", "state.json", "restore.sh", "live.nft"):
        if name == "live.nft" and not os.path.exists(os.path.join(state_dir, name)):
            continue
        st = os.stat(os.path.join(state_dir, name))
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0), name
    unit = open(os.path.join(dirs["unit_dir"], "mseg-restore.service")).read()
    for line in ("After=nftables.service", "Before=network-pre.target shutdown.target", "Wants=network-pre.target",
                 "DefaultDependencies=no", "WantedBy=sysinit.target"):
        assert line in unit
    assert os.path.realpath(os.path.join(dirs["unit_dir"], "sysinit.target.wants", "mseg-restore.service")) == \
        os.path.join(dirs["unit_dir"], "mseg-restore.service")

    # the backup is the table that was live before, loadable as it is
    fleet.run("b", ["nft", "-f", os.path.join(state_dir, "ruleset.prev.nft")])
    assert listing(fleet, "b") == first
    # a "reboot": namespace b is fresh; the boot script restores what a has live
    fleet.run("b", ["nft", "delete", "table", "inet", "mseg"])
    proc = fleet.run("b", ["sh", os.path.join(state_dir, "restore.sh")])
    assert "loaded" in proc.stdout
    assert listing(fleet, "b") == listing(fleet, "a")


def test_corrupt_persisted_file_fails_closed(fleet, dirs):
    play(fleet, dirs, {"content": ruleset(policy="accept")})
    path = os.path.join(dirs["state_dir"], "ruleset.json")  # the judged JSON form: what the boot restore loads
    text = open(path).read()
    with open(path, "w") as handle:
        handle.write(text.replace('"right": 8080', '"right": 8081'))
    proc = fleet.run("b", ["sh", os.path.join(dirs["state_dir"], "restore.sh")], check=False)
    assert proc.returncode == 1
    assert "is corrupt" in proc.stderr and "fail-closed" in proc.stderr
    assert "mode_failsafe" in listing(fleet, "b")
    assert fleet.probe("a", "b", 8080, timeout=0.5) == TIMEOUT
    assert fleet.probe("a", "b", 22) == CONNECTED  # the operator can still repair the host

    with open(path, "w") as handle:  # a correct checksum over a ruleset nft rejects
        body = text.split("\n", 1)[1].replace('"policy": "accept"', '"policy": "maybe"')
        handle.write("# mseg-sha256: %s\n%s" % (hashlib.sha256(body.encode()).hexdigest(), body))
    proc = fleet.run("b", ["sh", os.path.join(dirs["state_dir"], "restore.sh")], check=False)
    assert proc.returncode == 1 and "nft rejects" in proc.stderr


def test_persist_false_removes_the_persisted_copy(fleet, dirs):
    play(fleet, dirs, {"content": ruleset()})
    rc, res = play(fleet, dirs, {"content": ruleset(), "persist": False})
    assert rc == 0 and res["changed"] and res["persisted"] is None
    assert not os.path.exists(os.path.join(dirs["state_dir"], "ruleset.nft"))
    assert not os.path.exists(os.path.join(dirs["unit_dir"], "mseg-restore.service"))
    rc, res = play(fleet, dirs, {"content": ruleset(), "persist": False})
    assert res["changed"] is False


# ------------------------------------------------------------------ 4. state: previous


def test_previous_restores_the_table_the_last_apply_replaced(fleet, dirs):
    play(fleet, dirs, {"content": ruleset(port=7001)})
    first = listing(fleet)
    play(fleet, dirs, {"content": ruleset(port=7002)})
    second = listing(fleet)

    rc, res = play(fleet, dirs, {"state": "previous"}, check=True, diff=True)
    assert rc == 0 and res["changed"] and "would restore" in res["msg"], res
    assert listing(fleet) == second
    assert res["diff"]["before"] == second and res["diff"]["after"] == first

    rc, res = play(fleet, dirs, {"state": "previous"})
    assert rc == 0 and res["changed"] and "restored table inet mseg" in res["msg"], res
    assert listing(fleet) == first
    assert fleet.probe("b", "a", 7001) == CONNECTED and fleet.probe("b", "a", 7002, timeout=0.5) == TIMEOUT
    rc, res = play(fleet, dirs, {"state": "previous"})
    assert rc == 0 and res["changed"] is False, res
    # persisted: a "reboot" (namespace b, fresh) gets the restored table back
    fleet.run("b", ["sh", os.path.join(dirs["state_dir"], "restore.sh")])
    assert listing(fleet, "b") == first


def test_previous_goes_back_one_apply(fleet, dirs):
    play(fleet, dirs, {"content": ruleset(port=7001)})
    play(fleet, dirs, {"content": ruleset(port=7002)})
    second = listing(fleet)
    play(fleet, dirs, {"content": ruleset(port=7003)})
    rc, res = play(fleet, dirs, {"state": "previous"})
    assert rc == 0 and res["changed"], res
    assert listing(fleet) == second


def test_previous_of_the_first_apply_removes_the_table(fleet, dirs):
    play(fleet, dirs, {"content": ruleset()})
    rc, res = play(fleet, dirs, {"state": "previous"})
    assert rc == 0 and res["changed"] and res["persisted"] is None, res
    assert listing(fleet) is None
    assert not os.path.exists(os.path.join(dirs["state_dir"], "ruleset.nft"))


@pytest.mark.parametrize("edit", ["add rule inet mseg input tcp dport 9999 accept", "delete table inet mseg"])
def test_previous_never_overwrites_a_hand_edit(fleet, dirs, edit):
    play(fleet, dirs, {"content": ruleset(port=7001)})
    play(fleet, dirs, {"content": ruleset(port=7002)})
    fleet.run("a", ["nft", edit])
    edited = listing(fleet)
    persisted = open(os.path.join(dirs["state_dir"], "ruleset.nft")).read()
    rc, res = play(fleet, dirs, {"state": "previous"})
    assert rc != 0 and "is not the one the last apply put there" in res["msg"], res
    assert res["msg"].endswith("nothing was changed") and "state: present" in res["msg"]
    assert listing(fleet) == edited
    assert open(os.path.join(dirs["state_dir"], "ruleset.nft")).read() == persisted


# ------------------------------------------------------------------ 5. lock


def test_concurrent_applies_are_serialised(fleet, dirs):
    os.makedirs(dirs["state_dir"], mode=0o700)
    holder = os.open(os.path.join(dirs["state_dir"], "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        rc, res = play(fleet, dirs, {"content": ruleset(), "lock_timeout": 2})
    finally:
        os.close(holder)
    assert rc != 0 and "another mseg apply holds" in res["msg"], res
    assert listing(fleet) is None

    # two real runs at once, different contents: both succeed, one after the other, and the
    # recorded state matches whichever ran last
    base = dirs["tmp"]
    procs = []
    for index, port in enumerate((7001, 7002)):
        sub = dict(dirs, tmp=base / ("run%d" % index))
        sub["tmp"].mkdir()
        procs.append((sub, port))
    results = []

    def worker(sub, port):
        results.append(play(fleet, sub, {"content": ruleset(port=port, extra=1000)}))
    threads = [threading.Thread(target=worker, args=p) for p in procs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [result[0] for result in results] == [0, 0], [result[1].get("msg") for result in results]
    assert all(result[1]["changed"] for result in results)
    last = 7001 if "tcp dport 7001" in listing(fleet) else 7002
    rc, res = play(fleet, dirs, {"content": ruleset(port=last, extra=1000)})
    assert rc == 0 and res["changed"] is False, res


# ------------------------------------------------------------------ 6. return values


def test_return_values(fleet, dirs):
    rc, res = play(fleet, dirs, {"content": ruleset(extra=500),
                                 }, env={"SSH_CONNECTION": "10.77.0.2 40000 10.77.0.1 22"})
    assert rc == 0, res
    body = open(os.path.join(dirs["state_dir"], "ruleset.nft")).read().split("\n", 1)[1]
    assert res["sha256"] == hashlib.sha256(body.encode()).hexdigest()
    assert (res["rules"], res["sets"], res["elements"]) == (8, 3, 502)
    assert res["rolled_back"] is False and res["management_peers"] == ["10.77.0.2 . 22"]
    rc, again = play(fleet, dirs, {"content": ruleset(extra=500)}, env={"SSH_CONNECTION": "10.77.0.2 40000 10.77.0.1 22"})
    assert again["changed"] is False
    assert (again["sha256"], again["rules"], again["sets"], again["elements"]) == \
        (res["sha256"], res["rules"], res["sets"], res["elements"])


# ------------------------------------------------------------------ 7. automatic management entry


def test_controller_address_is_let_in(fleet, dirs):
    """An enforce ruleset that admits nobody still admits the controller, unless management_auto is off."""
    closed = ruleset(peers=("192.0.2.1",))
    env = {"SSH_CONNECTION": "%s 51000 %s 22" % (fleet.addr("b"), fleet.addr("a"))}
    rc, res = play(fleet, dirs, {"content": closed}, env=env)
    assert rc == 0 and res["management_peers"] == ["%s . 22" % fleet.addr("b")]
    assert fleet.probe("b", "a", 22) == CONNECTED
    assert fleet.probe("b", "a", 8080, timeout=0.5) == TIMEOUT

    rc, res = play(fleet, dirs, {"content": closed, "management_auto": False}, env=env)
    assert rc == 0 and res["changed"] and res["management_peers"] == []
    assert fleet.probe("b", "a", 22, timeout=0.5) == TIMEOUT


def test_controller_address_found_when_become_strips_the_environment(fleet, dirs):
    """sudo/su drop SSH_CONNECTION; the module finds it in an ancestor process (the sshd session)."""
    env = {"SSH_CONNECTION": "fd00:77::2 51000 fd00:77::1 2222"}

    def stripped(argv):  # the shell keeps SSH_CONNECTION in its environ, its child does not see it
        return ["sh", "-c", 'env -u SSH_CONNECTION "$@"; exit $?', "sh"] + argv
    rc, res = play(fleet, dirs, {"content": ruleset()}, env=env, wrapper=stripped)
    assert rc == 0 and res["management_peers"] == ["fd00:77::2 . 2222"], res
    assert "fd00:77::2 . 2222" in listing(fleet)
    assert fleet.probe("b", "a", 2222, family=6) == CONNECTED


def test_content_without_management_sets_is_refused(fleet, dirs):
    content = ruleset().replace("set mgmt_auto_v4 {\n        type ipv4_addr . inet_service\n    }", "")
    content = content.replace("ip saddr . tcp dport @mgmt_auto_v4 counter name \"mgmt_in\" accept", "")
    rc, res = play(fleet, dirs, {"content": content}, env={"SSH_CONNECTION": "10.77.0.2 1 10.77.0.1 22"})
    assert rc != 0 and "does not declare set mgmt_auto_v4" in res["msg"]
    assert listing(fleet) is None


# ------------------------------------------------------------------ bad input and faults


def test_invalid_ruleset_keeps_the_previous_one(fleet, dirs):
    play(fleet, dirs, {"content": ruleset()})
    live = listing(fleet)
    rc, res = play(fleet, dirs, {"content": ruleset().replace("policy drop", "policy perhaps")})
    assert rc != 0 and "nft rejected the ruleset" in res["msg"] and "perhaps" in res["msg"], res
    assert "Traceback" not in res["msg"]
    assert listing(fleet) == live


def test_unwritable_state_dir_applies_nothing(fleet, dirs):
    blocker = dirs["tmp"] / "not-a-dir"
    blocker.write_text("")
    rc, res = play(fleet, dirs, {"content": ruleset(), "state_dir": str(blocker / "mseg")})
    assert rc != 0 and "cannot write the state directory" in res["msg"], res
    assert listing(fleet) is None


def test_nft_missing(fleet, dirs):
    empty = dirs["tmp"] / "empty"
    empty.mkdir()

    def hide_nft(argv):  # a private mount namespace where /usr/sbin (and with it nft) is empty
        return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /usr/sbin && exec "$@"', str(empty)] + argv
    rc, res = play(fleet, dirs, {"content": ruleset()}, wrapper=hide_nft)
    assert rc != 0 and "nft is not installed" in res["msg"], res


# ------------------------------------------------------------------ crash safety


def test_kill_9_at_random_moments_never_leaves_a_mixture(fleet, dirs):
    """50 applies killed with SIGKILL at random moments: the live table is always old or new; the next run converges."""
    contents = [ruleset(port=7001, extra=1500, label="A"), ruleset(port=7002, extra=1500, label="B")]
    listings = []
    for content in contents:  # the exact listing of each, from a scratch host
        fleet.run("b", ["nft", "-f", "-"], input=PREAMBLE + content)
        listings.append(listing(fleet, "b"))
    code = ("import sys; sys.path.insert(0, %r); "
            "from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine as e; "
            "e.apply(e.Request(sys.stdin.read(), state_dir=%r, unit_dir=%r))"
            % (COLLECTIONS, dirs["state_dir"], dirs["unit_dir"]))
    rng = random.Random(1234)
    started = time.monotonic()
    proc = fleet.popen("a", [sys.executable, "-c", code], stdin=subprocess.PIPE)
    proc.communicate(contents[0].encode())
    full = time.monotonic() - started
    seen = set()
    for i in range(50):
        content = contents[(i + 1) % 2]
        proc = fleet.popen("a", [sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        proc.stdin.write(content.encode())
        proc.stdin.close()
        time.sleep(rng.uniform(0, full * 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        for child in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                                    check=False).stdout.split():
            os.kill(int(child), signal.SIGKILL)
        proc.wait()
        live = listing(fleet)
        assert live in listings, "iteration %d: live table is neither the old nor the new ruleset" % i
        seen.add(listings.index(live))
    assert seen == {0, 1}, "the kills never landed on both sides of the commit"
    rc, res = play(fleet, dirs, {"content": contents[0]})
    assert rc == 0, res
    rc, res = play(fleet, dirs, {"content": contents[0]})
    assert rc == 0 and res["changed"] is False, res
    assert listing(fleet) == listings[0]


# ------------------------------------------------------------------ commit-confirmed (local connection)


def test_commit_confirmed_confirms_over_a_fresh_connection(fleet, dirs):
    rc, res = play(fleet, dirs, {"content": ruleset(), "confirm_timeout": 3}, diff=True)
    assert rc == 0 and res["changed"] and not res["rolled_back"], res
    assert "commit confirmed" in res["msg"]
    time.sleep(4)
    assert "tcp dport 8080" in listing(fleet)  # still there after the timeout
    assert os.path.exists(os.path.join(dirs["state_dir"], "ruleset.nft"))
    rc, res = play(fleet, dirs, {"content": ruleset(), "confirm_timeout": 3})
    assert rc == 0 and res["changed"] is False
    assert os.listdir(os.path.join(dirs["state_dir"], "txn")) == []


def test_unconfirmed_apply_rolls_back_by_itself(fleet, dirs):
    """The host side alone: arm, start, never confirm -> the previous table and files come back."""
    play(fleet, dirs, {"content": ruleset()})
    old_live = listing(fleet)
    old_files = {n: open(os.path.join(dirs["state_dir"], n)).read() for n in ("ruleset.nft", "state.json")}
    code = ("import sys, json; sys.path.insert(0, %r); "
            "from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine as e; "
            "from ansible_collections.mseg.fleet.plugins.module_utils.apply.confirmed import arm; "
            "r = arm(e.Request(sys.stdin.read(), state_dir=%r, unit_dir=%r), 'ab12cd34ef56', 2); "
            "print(json.dumps(r))" % (COLLECTIONS, dirs["state_dir"], dirs["unit_dir"]))
    armed = json.loads(fleet.run("a", [sys.executable, "-c", code], input=ruleset(port=9090)).stdout)
    assert armed["armed"] is True
    assert listing(fleet) == old_live  # nothing applied before the start signal
    started = time.monotonic()
    open(armed["go"], "w").close()
    deadline = time.monotonic() + 5
    while "9090" not in (listing(fleet) or "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "tcp dport 9090" in listing(fleet)
    while listing(fleet) != old_live and time.monotonic() < started + 15:  # 2 s, and slack for a loaded CI host
        time.sleep(0.1)
    assert listing(fleet) == old_live
    assert time.monotonic() - started >= 1.9, "rolled back before the 2 s confirm timeout"
    for name, text in old_files.items():
        assert open(os.path.join(dirs["state_dir"], name)).read() == text
    with pytest.raises(ApplyError):
        confirmed.confirm(Paths(dirs["state_dir"], dirs["unit_dir"]), "0000000000")
    final = confirmed.confirm(Paths(dirs["state_dir"], dirs["unit_dir"]), "ab12cd34ef56")
    assert final["rolled_back"] is True and "no confirmation" in final["msg"]
    rc, res = play(fleet, dirs, {"content": ruleset()})
    assert rc == 0 and res["changed"] is False


# ------------------------------------------------------------------ the render contract


GOLDEN = os.path.join(ROOT, "tests", "unit", "fixtures", "golden")


@pytest.mark.skipif(not os.path.isdir(GOLDEN), reason="no rendered rulesets in tests/unit/fixtures/golden")
def test_rulesets_rendered_by_the_engine_apply_idempotently(fleet, dirs):
    """Every ruleset the renderer's golden files hold passes the scope check, loads, and re-runs unchanged."""
    names = sorted(n for n in os.listdir(GOLDEN) if n.endswith(".nft"))
    assert names
    peer = "%s 51000 %s 22" % (fleet.addr("b"), fleet.addr("a"))
    for index, name in enumerate(names):
        with open(os.path.join(GOLDEN, name)) as handle:
            content = handle.read()
        if index == 0:  # one of them through ansible-playbook, the rest through the engine directly
            rc, res = play(fleet, dirs, {"content": content}, env={"SSH_CONNECTION": peer})
            assert rc == 0 and res["changed"], (name, res)
            rc, res = play(fleet, dirs, {"content": content}, env={"SSH_CONNECTION": peer})
            assert rc == 0 and res["changed"] is False, (name, res)
        else:
            runner = ("import json, sys; sys.path.insert(0, %r); "
                      "from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine as e; text = sys.stdin.read(); "
                      "req = lambda: e.Request(text, peers=[(%r, 22)], state_dir=%r, unit_dir=%r); "
                      "print(json.dumps([e.apply(req())['changed'], e.apply(req())['changed']]))"
                      % (COLLECTIONS, fleet.addr("b"), dirs["state_dir"],
                         dirs["unit_dir"]))
            out = fleet.run("a", [sys.executable, "-c", runner], input=content).stdout
            assert json.loads(out) == [True, False], name
        assert "%s . 22" % fleet.addr("b") in listing(fleet), name
        assert fleet.probe("b", "a", 22) == CONNECTED, name  # the controller is let in, whatever the policy
