"""The apply engine's decisions (plugins/module_utils/apply/engine.py), without root: the fake nft of
tests/unit/nft/fake.py stands in for the kernel, temporary directories for /etc/mseg and /etc/systemd/system.

tests/integration/test_nft_apply.py proves the same guarantees against real nftables in network namespaces.
"""

import json
import os
import threading
import time
import types

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine, persist
from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import PREAMBLE, build_transaction
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import read_text, sha256_text
from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner
from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset
from ansible_collections.mseg.fleet.tests.unit.nft.fake import FakeNft, listing_of
from ansible_collections.mseg.fleet.tests.unit.nft.samples import RULESET

LIST = ["-s", "list", "table", "inet", "mseg"]


def ruleset(port):
    """RULESET with one more rule: a policy per port."""
    last = "        counter log prefix"
    return RULESET.replace(last, "        tcp dport %d accept\n%s" % (port, last))


A, B, C = ruleset(7001), ruleset(7002), ruleset(7003)


class Host:
    """One host: the fake kernel, the state and unit directories, and an ``apply`` that runs the engine on them."""

    def __init__(self, tmp_path, monkeypatch):
        self.fake = FakeNft()
        self.fake.patch_genid(monkeypatch)
        self.daemon_reloads = []
        monkeypatch.setattr(persist, "subprocess", types.SimpleNamespace(run=lambda argv, **_kw: (
            self.daemon_reloads.append(argv))))
        self.dirs = {"state_dir": str(tmp_path / "etc-mseg"), "unit_dir": str(tmp_path / "units")}
        self.paths = persist.Paths(**self.dirs)

    def apply(self, content="", **kwargs):
        request = engine.Request(content, **dict(self.dirs, **kwargs))
        return engine.apply(request, runner.Nft(self.fake.path, self.fake, translate=False))

    def state(self):
        return json.loads(read_text(self.paths.state))

    def files(self):
        """Every file under the state and unit directories, with its text (the lock aside: it holds a pid)."""
        found = {}
        for top in self.dirs.values():
            for where, _dirs, names in os.walk(top):
                for name in names:
                    path = os.path.join(where, name)
                    if path != self.paths.lock:
                        found[path] = os.readlink(path) if os.path.islink(path) else read_text(path)
        return found


@pytest.fixture(name="host")
def fixture_host(tmp_path, monkeypatch):
    return Host(tmp_path, monkeypatch)


def live_of(content, peers=()):
    """The live listing the fake shows once ``content`` is applied."""
    return listing_of(build_transaction(content, peers).rsplit("delete table inet mseg\n", 1)[1])


# ------------------------------------------------------------------ present: apply, in sync, drift


def test_the_first_apply_changes_the_table_and_records_it(host):
    res = host.apply(A)
    transaction = PREAMBLE + A
    assert res["changed"] and not res["drift"] and res["msg"] == "replaced table inet mseg"
    assert host.fake.loads == [transaction]
    assert host.fake.table == live_of(A)
    assert res["sha256"] == sha256_text(transaction)
    assert (res["rules"], res["sets"], res["elements"]) == (3, 2, 0)
    state = host.state()
    assert state["desired_sha256"] == res["sha256"]
    # the load was the only commit (generation id + 1): the live table is the judged document, nothing is listed
    assert state["document_sha256"] == sha256_text(read_text(host.paths.ruleset_json).split("\n", 1)[1])
    assert "live_sha256" not in state and read_text(host.paths.live) is None
    assert LIST not in host.fake.commands()[host.fake.commands().index(["-j", "-f", "-"]):]
    assert state["genid"] == host.fake.genid()
    assert read_text(host.paths.prev) == PREAMBLE  # nothing was live before: the backup removes the table
    assert state["previous_sha256"] == sha256_text(PREAMBLE)
    assert read_text(host.paths.ruleset) == persist.persisted_text(transaction)
    assert os.path.realpath(host.paths.wants) == host.paths.unit
    loads = [args for args in host.fake.commands() if "-f" in args]
    assert loads == [["-j", "-f", "-"]]  # one load, no separate nft -c: the transaction is all-or-nothing


def test_in_sync_reports_no_change_and_neither_loads_nor_lists(host):
    host.apply(A)
    before = host.files()
    commands = len(host.fake.commands())
    res = host.apply(A)
    assert res["changed"] is False and res["msg"] == "table inet mseg already matches"
    assert len(host.fake.loads) == 1
    assert host.fake.commands()[commands:] == []  # same generation id: not even a listing
    assert host.files() == before
    assert (res["sha256"], res["rules"]) == (sha256_text(PREAMBLE + A), 3)


def test_another_tables_change_is_listed_once_and_still_in_sync(host):
    host.apply(A)
    host.fake.generation += 1  # a commit to another table (Docker, firewalld) bumps the same id
    commands = len(host.fake.commands())
    res = host.apply(A)
    assert res["changed"] is False and len(host.fake.loads) == 1
    # the first apply recorded no listing: its JSON form is compared with the document it loaded, then recorded
    assert host.fake.commands()[commands:] == [LIST, ["-j", "list", "table", "inet", "mseg"]]
    assert host.state()["genid"] == host.fake.genid()
    assert read_text(host.paths.live) == host.fake.table
    assert host.state()["live_sha256"] == sha256_text(host.fake.table)
    commands = len(host.fake.commands())
    assert host.apply(A)["changed"] is False
    assert host.fake.commands()[commands:] == []  # the new id was recorded: no listing the next time
    host.fake.generation += 1
    assert host.apply(A)["changed"] is False
    assert host.fake.commands()[commands:] == [LIST]  # the recorded listing answers from now on


def test_a_hand_edit_after_an_unlisted_apply_is_drift(host):
    host.apply(A)
    host.fake.edit(host.fake.table.replace("tcp dport 7001 accept\n", "tcp dport 9999 accept\n"))
    res = host.apply(A, want_diff=True)
    assert res["changed"] and res["drift"] and res["msg"] == "replaced table inet mseg (corrected drift)"
    assert "tcp dport 9999" in res["diff"]["before"] and host.fake.table == live_of(A)
    assert host.apply(B)["changed"] and "live_sha256" not in host.state()  # B is recorded without a listing
    host.fake.drop_table()
    res = host.apply(B)
    assert res["changed"] and res["drift"] and host.fake.table == live_of(B)


def test_an_unchanged_run_parses_nothing(host):
    """The recorded state names the transaction judged before it was loaded: an unchanged run neither parses the
    content in a scratch namespace nor lists the table."""
    host.apply(A)
    calls = len(host.fake.calls)
    assert host.apply(A)["changed"] is False
    assert host.fake.calls[calls:] == []
    os.unlink(host.paths.ruleset_json)  # a persisted copy to repair needs the judged document: parsed again
    res = host.apply(A)
    assert res["changed"] and res["msg"] == "table inet mseg already matches; persisted copy repaired"
    assert [os.path.basename(argv[0]) for argv, _input in host.fake.calls[calls:]] == ["unshare"]


def test_the_recorded_state_is_trusted_only_in_the_namespace_that_recorded_it(host, monkeypatch):
    """The state is keyed by the namespace cookie: another namespace's cookie (at the same generation id), or a
    kernel that cannot tell its cookie, lists the table again (the recycled inode of issue 16 needs a real kernel:
    tests/integration/test_apply_state.py)."""
    host.apply(A)
    assert runner.namespace_identity() is not None
    assert host.state()["identity"] == runner.namespace_identity()
    for identity in ("netns-cookie:%d" % (2 ** 63 + 7), None):
        monkeypatch.setattr(engine, "namespace_identity", lambda identity=identity: identity)
        commands = len(host.fake.commands())
        host.fake.drop_table()
        host.fake.generation = host.state()["genid"]  # the same generation count, as in the issue
        res = host.apply(A)
        assert res["changed"] is True and host.fake.commands()[commands] == LIST, res
        assert host.fake.table == live_of(A)


@pytest.mark.parametrize("edit,shows", [
    (lambda live: live.replace("tcp dport 7001 accept\n", "tcp dport 7001 accept\ntcp dport 9999 accept\n"),
     "tcp dport 9999 accept"),
    (lambda live: live.replace("tcp dport 7001 accept\n", ""), None),
    (lambda live: None, None),
])
def test_drift_is_detected_shown_and_corrected(host, edit, shows):
    host.apply(A)
    applied = host.fake.table
    host.fake.edit(edit(applied))
    drifted = host.fake.table
    files = host.files()

    res = host.apply(A, check_mode=True, want_diff=True)
    assert res["changed"] and res["drift"] and res["msg"] == "would replace table inet mseg (live table drifted)"
    assert host.fake.table == drifted and len(host.fake.loads) == 1 and host.files() == files
    assert res["diff"]["before"] == (drifted or "")
    assert res["diff"]["after"] == PREAMBLE + A  # no scratch namespace in the fake: the desired text
    if shows:
        assert shows in res["diff"]["before"] and shows not in res["diff"]["after"]

    res = host.apply(A, want_diff=True)
    assert res["changed"] and res["drift"] and res["msg"] == "replaced table inet mseg (corrected drift)"
    assert host.fake.table == applied
    assert res["diff"] == {"before": drifted or "", "after": applied, "before_header": "live table inet mseg",
                           "after_header": "desired table inet mseg"}
    assert read_text(host.paths.prev) == PREAMBLE + (drifted or "")  # the backup is what was live
    assert host.apply(A)["changed"] is False


def test_check_mode_loads_nothing_and_writes_nothing(host):
    res = host.apply(A, check_mode=True, want_diff=True)
    assert res["changed"] and res["msg"] == "would replace table inet mseg"
    assert host.fake.loads == [] and host.fake.table is None
    assert not os.path.exists(host.dirs["state_dir"]) and not os.path.exists(host.dirs["unit_dir"])
    assert res["diff"]["before"] == ""

    host.apply(A)
    files, live = host.files(), host.fake.table
    res = host.apply(B, check_mode=True, want_diff=True)
    assert res["changed"] and not res["drift"]
    assert host.fake.table == live and len(host.fake.loads) == 1 and host.files() == files
    assert "tcp dport 7001" in res["diff"]["before"] and "tcp dport 7002" in res["diff"]["after"]


def test_a_ruleset_the_kernel_refuses_changes_nothing(host):
    host.apply(A)
    files, live = host.files(), host.fake.table
    host.fake.fail_load = "internal:0:0-0: Error: Could not process rule: Too many open files in system\n"
    with pytest.raises(MsegError) as err:
        host.apply(B)
    assert "the kernel kept the previous one" in str(err.value) and "Too many open files" in str(err.value)
    assert host.fake.table == live and len(host.fake.loads) == 1 and host.files() == files


def test_check_mode_asks_the_kernel_and_reports_its_refusal(host):
    host.apply(A)
    files = host.files()
    host.fake.reject = "/dev/stdin:12:9-14: Error: syntax error, unexpected perhaps\n"
    with pytest.raises(MsegError) as err:
        host.apply(B, check_mode=True)
    assert "nft rejected the ruleset" in str(err.value) and "content:12:9-14" in str(err.value)
    assert len(host.fake.loads) == 1 and host.files() == files
    host.fake.reject = None
    assert host.apply(B, check_mode=True)["changed"] is True
    assert ["-j", "-c", "-f", "-"] in host.fake.commands()


@pytest.mark.parametrize("damage", [
    lambda paths: open(paths.ruleset, "a").write("add rule inet mseg input accept\n"),
    lambda paths: open(paths.ruleset, "w").write(read_text(paths.ruleset)[:100]),
    lambda paths: os.unlink(paths.ruleset),
    lambda paths: os.unlink(paths.wants),
])
def test_a_damaged_persisted_copy_is_repaired_without_reloading_the_kernel(host, damage):
    host.apply(A)
    files = host.files()
    damage(host.paths)
    res = host.apply(A)
    assert res["changed"] and not res["drift"]
    assert res["msg"] == "table inet mseg already matches; persisted copy repaired"
    assert len(host.fake.loads) == 1
    assert host.files() == files
    assert host.apply(A)["changed"] is False


def test_persist_false_removes_the_persisted_copy_and_keeps_the_table(host):
    host.apply(A)
    res = host.apply(A, persist=False)
    assert res["changed"] and res["persisted"] is None and len(host.fake.loads) == 1
    assert not any(os.path.lexists(p) for p in (host.paths.ruleset, host.paths.unit, host.paths.wants))
    assert host.apply(A, persist=False)["changed"] is False


def test_absent_removes_table_and_persisted_copy_and_keeps_a_backup(host):
    host.apply(A)
    live = host.fake.table
    res = host.apply(state="absent")
    assert res["changed"] and res["msg"] == "removed table inet mseg" and res["sha256"] is None
    assert host.fake.table is None and host.fake.loads[-1] == PREAMBLE
    assert not any(os.path.lexists(p) for p in (host.paths.ruleset, host.paths.unit, host.paths.wants,
                                                host.paths.live))
    assert read_text(host.paths.prev) == PREAMBLE + live
    res = host.apply(state="absent")
    assert res["changed"] is False and len(host.fake.loads) == 2


def test_management_peers_are_added_in_the_same_transaction(host):
    peers = [("2001:db8::5", 22), ("192.0.2.10", 2222)]
    res = host.apply(A, peers=peers)
    assert res["management_peers"] == ["2001:db8::5 . 22", "192.0.2.10 . 2222"]
    assert host.fake.loads == [PREAMBLE + A + "add element inet mseg mgmt_auto_v4 { 192.0.2.10 . 2222 }\n"
                               "add element inet mseg mgmt_auto_v6 { 2001:db8::5 . 22 }\n"]
    assert host.state()["peers"] == [list(peer) for peer in peers]
    assert host.apply(A, peers=peers)["changed"] is False
    res = host.apply(A, peers=[("192.0.2.11", 22)])  # the controller connects from elsewhere: its address goes in
    assert res["changed"] and not res["drift"] and len(host.fake.loads) == 2
    assert "192.0.2.11 . 22" in host.fake.table and "192.0.2.10" not in host.fake.table


def test_the_emergency_bypass_table_is_kept_when_asked_for_again(host):
    bypass = bypass_ruleset("web-01")
    host.apply(bypass)
    assert "counter %s" % contract.EMERGENCY_MARKER in host.fake.table
    res = host.apply(bypass)
    assert res["changed"] is False and len(host.fake.loads) == 1
    assert "counter %s" % contract.EMERGENCY_MARKER in host.fake.table


# ------------------------------------------------------------------ the lock


def test_lock_times_out_with_a_clear_message(tmp_path):
    paths = persist.Paths(str(tmp_path), None)
    with engine.lock(paths, 5):
        with pytest.raises(MsegError) as err:
            engine.lock(paths, 0.2).acquire()
    assert "another mseg apply holds" in str(err.value) and "pid %d" % os.getpid() in str(err.value)
    engine.lock(paths, 0.2).acquire().release()


def test_an_apply_waits_for_the_one_that_holds_the_lock(host):
    host.apply(A)
    held = engine.lock(host.paths, 1).acquire()
    try:
        with pytest.raises(MsegError) as err:
            host.apply(B, lock_timeout=0.2)
        assert "another mseg apply holds" in str(err.value) and "nothing was changed" in str(err.value)
        results = []
        waiting = threading.Thread(target=lambda: results.append(host.apply(B, lock_timeout=10)))
        waiting.start()
        time.sleep(0.3)
        assert results == [] and len(host.fake.loads) == 1  # it waits, and has not loaded
    finally:
        held.release()
    waiting.join()
    assert results[0]["changed"] and len(host.fake.loads) == 2


def test_request_rejects_unknown_state():
    with pytest.raises(MsegError):
        engine.Request("x", state="gone")


# ------------------------------------------------------------------ state: previous


def test_previous_restores_the_table_the_last_apply_replaced_and_persists_it(host):
    host.apply(A)
    table_a = host.fake.table
    host.apply(B)
    backup = read_text(host.paths.prev)
    res = host.apply(state="previous", want_diff=True)
    assert res["changed"] and not res["drift"]
    assert res["msg"] == "restored table inet mseg from the backup %s" % host.paths.prev
    assert host.fake.table == table_a and host.fake.loads[-1] == backup
    assert res["diff"]["before"] == live_of(B) and res["diff"]["after"] == table_a
    assert read_text(host.paths.ruleset) == persist.persisted_text(backup)  # a reboot keeps it
    assert res["persisted"] == host.paths.ruleset and res["sha256"] == sha256_text(backup)
    assert read_text(host.paths.prev) == backup  # the backup stays


def test_previous_twice_changes_nothing_the_second_time(host):
    host.apply(A)
    host.apply(B)
    host.apply(state="previous")
    files = host.files()
    res = host.apply(state="previous")
    assert res["changed"] is False and len(host.fake.loads) == 3 and host.files() == files
    assert res["msg"] == "table inet mseg already is the backup %s" % host.paths.prev


def test_previous_goes_back_one_apply(host):
    host.apply(A)
    host.apply(B)
    table_b = host.fake.table
    host.apply(C)
    host.apply(state="previous")
    assert host.fake.table == table_b
    host.apply(A)  # an apply after a restore is an apply like any other: its backup is the restored table
    host.apply(state="previous")
    assert host.fake.table == table_b


def test_a_backup_of_no_table_removes_the_table(host):
    host.apply(A)
    res = host.apply(state="previous")
    assert res["changed"] and res["msg"] == "removed table inet mseg from the backup %s" % host.paths.prev
    assert host.fake.table is None and host.fake.loads[-1] == PREAMBLE
    assert res["sha256"] is None and res["persisted"] is None
    assert not any(os.path.lexists(p) for p in (host.paths.ruleset, host.paths.unit, host.paths.wants))
    assert host.apply(state="previous")["changed"] is False


def test_previous_in_check_mode_loads_nothing_and_writes_nothing(host):
    host.apply(A)
    host.apply(B)
    files, live = host.files(), host.fake.table
    res = host.apply(state="previous", check_mode=True, want_diff=True)
    assert res["changed"] and res["msg"] == "would restore table inet mseg from the backup %s" % host.paths.prev
    assert host.fake.table == live and len(host.fake.loads) == 2 and host.files() == files
    assert res["diff"]["before"] == live and res["diff"]["after"] == read_text(host.paths.prev)


def test_previous_adds_the_management_peers(host):
    host.apply(A)
    host.apply(B)
    res = host.apply(state="previous", peers=[("192.0.2.10", 22)])
    assert res["management_peers"] == ["192.0.2.10 . 22"]
    assert host.fake.loads[-1].endswith("add element inet mseg mgmt_auto_v4 { 192.0.2.10 . 22 }\n")
    assert host.apply(state="previous", peers=[("192.0.2.10", 22)])["changed"] is False


@pytest.mark.parametrize("interfere,why", [
    (lambda host: host.fake.edit(host.fake.table + "add rule inet mseg input accept\n"),
     "the live table inet mseg is not the one the last apply put there (changed since"),
    (lambda host: host.fake.drop_table(),
     "the live table inet mseg is not the one the last apply put there (removed since"),
    (lambda host: host.fake([host.fake.path, "-f", "-"], input=PREAMBLE + C, text=True),  # applied from elsewhere
     "restoring would overwrite a newer one"),
    (lambda host: open(host.paths.prev, "a").write("add rule inet mseg input accept\n"),
     "is not the one the last apply kept"),
    (lambda host: open(host.paths.prev, "w").write("flush ruleset\n"),
     "was not written by nft_apply"),
    (lambda host: os.unlink(host.paths.prev),
     "there is no backup"),
    (lambda host: os.unlink(host.paths.state),
     "no apply is recorded in"),
])
def test_previous_is_refused_unless_the_live_table_replaced_that_backup(host, interfere, why):
    host.apply(A)
    host.apply(B)
    interfere(host)
    files, live, loads = host.files(), host.fake.table, len(host.fake.loads)
    for check_mode in (True, False):
        with pytest.raises(MsegError) as err:
            host.apply(state="previous", check_mode=check_mode)
        assert why in str(err.value) and str(err.value).endswith("nothing was changed"), str(err.value)
        assert "Traceback" not in str(err.value)
    assert host.fake.table == live and len(host.fake.loads) == loads and host.files() == files


def test_previous_is_refused_over_a_state_from_before_it_existed(host):
    host.apply(A)
    host.apply(B)
    state = host.state()
    del state["previous_sha256"]
    open(host.paths.state, "w").write(json.dumps(state))
    with pytest.raises(MsegError) as err:
        host.apply(state="previous")
    assert "written by an older mseg.fleet" in str(err.value)


def test_a_failed_load_keeps_the_backup_of_the_last_apply(host):
    host.apply(A)
    table_a = host.fake.table
    host.apply(B)
    host.fake.fail_load = "Error: Could not process rule: No buffer space available\n"
    with pytest.raises(MsegError):
        host.apply(C)
    host.fake.fail_load = None
    host.apply(state="previous")
    assert host.fake.table == table_a


def test_previous_takes_no_content():
    with pytest.raises(MsegError) as err:
        engine.Request(RULESET, state="previous")
    assert "content is not used with state: previous" in str(err.value)


def test_last_applied_knows_a_table_recorded_without_a_listing(host):
    """The agent asks ``last_applied`` whether an emergency bypass in the live table is its own: an apply that
    recorded no listing is still recognised, after another table's commit too, and a hand edit is not."""
    nft = runner.Nft(host.fake.path, host.fake, translate=False)
    host.apply(bypass_ruleset("web-01"))
    assert read_text(host.paths.live) is None
    assert engine.last_applied(host.paths, host.fake.table, nft)
    host.fake.generation += 1  # Docker, firewalld
    assert engine.last_applied(host.paths, host.fake.table, nft)
    host.fake.edit(host.fake.table.replace("counter", "counter ", 1))
    assert not engine.last_applied(host.paths, host.fake.table, nft)
    assert not engine.last_applied(host.paths, None, nft)
