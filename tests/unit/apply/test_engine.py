"""Unit tests of the nft_apply engine (plugins/module_utils/apply/): the parts that need no kernel."""

import json
import os
import subprocess
import threading
import time

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply import confirmed, engine, peers, persist
from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract, files
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner, scope

RULESET = """#!/usr/sbin/nft -f
# mseg.fleet ruleset for web-01: mode=enforce policy=0123abcd
table inet mseg {}
delete table inet mseg
table inet mseg {
    set mgmt_auto_v4 {
        type ipv4_addr . inet_service
    }
    set mgmt_auto_v6 {
        type ipv6_addr . inet_service
    }
    chain input {
        type filter hook input priority filter; policy drop;
        ip saddr . tcp dport @mgmt_auto_v4 counter accept comment "flush ruleset { is only a comment"
        # table ip nat { a comment is not a statement }
        counter log prefix "[MSEG-DROP] ID=0 " drop
    }
}
"""


# ------------------------------------------------------------------ scope


def test_scope_accepts_the_rendered_contract():
    scope.check_scope(RULESET)
    scope.check_scope("add table inet mseg\nadd element inet mseg s { 1.2.3.4 }\nflush table inet mseg\n"
                      "table inet mseg { chain c { } }; add rule inet mseg c accept\n"
                      "add ct helper inet mseg h { type \"ftp\" protocol tcp; }")


@pytest.mark.parametrize("statement,shown", [
    ("flush ruleset", "flush ruleset"),
    ("delete table ip nat", "delete table ip nat"),
    ("table ip filter {\n}", "table ip filter"),
    ("table mseg {\n}", "table mseg"),
    ("add rule inet firewalld filter_INPUT accept", "add rule inet firewalld filter_INPUT accept"),
    ("add element ip filter s { 1.2.3.4 }", "add element ip filter s"),
    ('include "/etc/nftables.conf"', 'include "/etc/nftables.conf"'),
    ("list ruleset", "list ruleset"),
])
def test_scope_refuses_anything_else_with_its_line(statement, shown):
    with pytest.raises(MsegError) as err:
        scope.check_scope(RULESET + statement + "\n")
    assert "line 19: '%s'" % shown in str(err.value)
    assert "touches more than table inet mseg" in str(err.value)


@pytest.mark.parametrize("content,message", [
    (RULESET + "}\n", "line 19: unbalanced '}'"),
    ("table inet mseg {\n chain c {\n", "the block opened on line 1 is never closed"),
    ("delete table inet mseg\n", "does not define 'table inet mseg"),
])
def test_scope_reports_broken_structure(content, message):
    with pytest.raises(MsegError) as err:
        scope.check_scope(content)
    assert message in str(err.value)


# ------------------------------------------------------------------ management peers


@pytest.mark.parametrize("value,peer", [
    ("192.0.2.10 51234 192.0.2.1 22", ("192.0.2.10", 22)),
    ("2001:db8::10 51234 2001:db8::1 2222", ("2001:db8::10", 2222)),
    ("::ffff:192.0.2.10 51234 ::ffff:192.0.2.1 22", ("192.0.2.10", 22)),
    ("fe80::1%eth0 51234 fe80::2%eth0 22", ("fe80::1", 22)),
    ("192.0.2.10 51234 22", ("192.0.2.10", 22)),
    ("", None),
    ("not-an-ip 1 2 3", None),
    ("192.0.2.10 1 192.0.2.1 70000", None),
])
def test_parse_ssh_connection(value, peer):
    assert peers.parse_ssh_connection(value) == peer


def test_detect_peer_from_environment_first():
    assert peers.detect_ssh_peer({"SSH_CONNECTION": "192.0.2.9 1 192.0.2.1 22"}, pid=1) == ("192.0.2.9", 22)
    assert peers.detect_ssh_peer({"SSH_CLIENT": "192.0.2.8 1 2022"}, pid=1) == ("192.0.2.8", 2022)


def test_detect_peer_walks_up_to_an_ancestor_that_has_it():
    env = dict(os.environ, SSH_CONNECTION="198.51.100.7 40000 198.51.100.1 22")
    ancestor = subprocess.Popen(["sh", "-c", "env -u SSH_CONNECTION sleep 30; true"], env=env)
    try:
        child = None
        for dummy in range(100):  # the sleep child of the shell
            out = subprocess.run(["pgrep", "-P", str(ancestor.pid)], capture_output=True, text=True,
                                 check=False).stdout.split()
            if out:
                child = int(out[0])
                break
            time.sleep(0.02)
        assert child
        with open("/proc/%d/environ" % child, "rb") as handle:
            assert b"SSH_CONNECTION" not in handle.read()  # as after sudo: only an ancestor has it
        stripped = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        assert peers.detect_ssh_peer(stripped, pid=child) == ("198.51.100.7", 22)
    finally:
        ancestor.kill()
        ancestor.wait()


def test_no_peer_without_ssh():
    assert peers.detect_ssh_peer({}, pid=1) is None


def test_build_transaction_adds_elements_in_the_same_transaction():
    text = peers.build_transaction(RULESET, [("2001:db8::5", 22), ("192.0.2.5", 2222)])
    assert text.startswith(peers.PREAMBLE + "#!/usr/sbin/nft -f\n")
    assert text.endswith("add element inet mseg mgmt_auto_v4 { 192.0.2.5 . 2222 }\n"
                         "add element inet mseg mgmt_auto_v6 { 2001:db8::5 . 22 }\n")
    assert peers.build_transaction(RULESET, []) == peers.PREAMBLE + RULESET


def test_build_transaction_needs_the_management_set():
    content = RULESET.replace("set mgmt_auto_v6", "set other_v6")
    with pytest.raises(MsegError) as err:
        peers.build_transaction(content, [("2001:db8::5", 22)])
    assert "does not declare set mgmt_auto_v6" in str(err.value) and "management_auto: false" in str(err.value)


# ------------------------------------------------------------------ nft wrapper


class FakeRun:
    def __init__(self, rc=0, out="", err=""):
        self.rc, self.out, self.err = rc, out, err
        self.calls = []

    def __call__(self, argv, input=None, capture_output=True, text=True, check=False):
        self.calls.append((argv, input))
        return subprocess.CompletedProcess(argv, self.rc, self.out, self.err)


def test_kernel_without_nf_tables(monkeypatch):
    monkeypatch.setattr(runner, "ruleset_genid", lambda: None)
    fake = FakeRun(1, err="Error: Could not process rule: Operation not supported\n")
    with pytest.raises(MsegError) as err:
        runner.Nft("/usr/sbin/nft", fake).probe()
    assert "kernel has no usable nf_tables support" in str(err.value) and "nothing was changed" in str(err.value)


def test_invalid_ruleset_message_names_the_error():
    fake = FakeRun(1, err="/dev/stdin:7:20-25: Error: syntax error, unexpected string\n")
    with pytest.raises(MsegError) as err:
        runner.Nft("/usr/sbin/nft", fake).check("x")
    assert str(err.value).startswith("nft rejected the ruleset (nft -c -f): content:7:20-25: Error: syntax error")
    assert fake.calls[0][0] == ["/usr/sbin/nft", "-c", "-f", "-"]


def test_listing_of_a_missing_table_is_none():
    fake = FakeRun(1, err="Error: No such file or directory; did you mean table 'x'?")
    assert runner.Nft("/usr/sbin/nft", fake).listing() is None


def test_nft_missing(monkeypatch):
    monkeypatch.setattr(runner.shutil, "which", lambda *a, **k: None)
    with pytest.raises(MsegError) as err:
        runner.find_nft()
    assert "nft is not installed" in str(err.value)


LISTING = """table inet mseg {
    counter mgmt_in {
    }

    set mgmt_auto_v4 {
        type ipv4_addr . inet_service
        elements = { 192.0.2.10 . 22 }
    }

    set peers_v4 {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/24, 10.1.0.1,
                 10.1.0.3, 10.2.0.0-10.2.0.9,
                 10.3.0.1 }
    }

    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        ip saddr @peers_v4 tcp dport 8080 counter accept comment "ID=1"
        counter drop
    }

    chain output {
        type filter hook output priority filter; policy accept;
    }
}
"""


def test_count_listing():
    assert runner.count_listing(LISTING) == {"rules": 3, "sets": 2, "elements": 6}
    assert runner.count_listing(None) == {"rules": 0, "sets": 0, "elements": 0}


# ------------------------------------------------------------------ files and lock


def test_write_atomic_and_state_dir(tmp_path):
    paths = persist.Paths(str(tmp_path / "mseg"), None)
    persist.prepare_state_dir(paths)
    assert os.stat(paths.dir).st_mode & 0o777 == 0o700
    files.write_atomic(paths.state, "{}")
    assert os.stat(paths.state).st_mode & 0o777 == 0o600
    assert [n for n in os.listdir(paths.dir) if n.startswith(".")] == []


def test_state_dir_proved_by_many_applies_at_once(tmp_path):
    # every apply proves the directory before it takes the lock; a shared probe name made one of two
    # concurrent applies fail with "cannot write the state directory" (seen in CI)
    paths = persist.Paths(str(tmp_path / "mseg"), None)
    errors = []

    def prove():
        for _attempt in range(200):
            try:
                persist.prepare_state_dir(paths)
            except ApplyError as exc:
                errors.append(str(exc))
    threads = [threading.Thread(target=prove) for _worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(paths.dir) == []


def test_unwritable_state_dir(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(MsegError) as err:
        persist.prepare_state_dir(persist.Paths(str(tmp_path / "file" / "mseg"), None))
    assert "cannot write the state directory" in str(err.value) and "nothing was applied" in str(err.value)


def test_persisted_file_carries_its_checksum(tmp_path):
    paths = persist.Paths(str(tmp_path), None)
    text = persist.persisted_text("table inet mseg {}\n")
    assert text.splitlines()[0] == contract.HASH_HEADER + files.sha256_text("table inet mseg {}\n")
    files.write_atomic(paths.ruleset, text)
    assert persist.persisted_ok(paths, "table inet mseg {}\n")
    assert not persist.persisted_ok(paths, "table inet mseg { }\n")


def test_lock_times_out_with_a_clear_message(tmp_path):
    paths = persist.Paths(str(tmp_path), None)
    with engine.lock(paths, 5):
        with pytest.raises(MsegError) as err:
            engine.lock(paths, 0.2).acquire()
    assert "another mseg apply holds" in str(err.value) and "pid %d" % os.getpid() in str(err.value)
    engine.lock(paths, 0.2).acquire().release()


def test_request_rejects_unknown_state():
    with pytest.raises(MsegError):
        engine.Request("x", state="gone")


# ------------------------------------------------------------------ confirm


def _txn(tmp_path, token, result, final=None, armed=True):
    paths = persist.Paths(str(tmp_path), None)
    txn = os.path.join(paths.txn, token)
    os.makedirs(txn)
    files.write_atomic(os.path.join(txn, "result.json"), json.dumps(result))
    if armed:
        files.write_atomic(os.path.join(txn, "armed"), "5")
    if final is not None:
        files.write_atomic(os.path.join(txn, "final.json"), json.dumps(final))
    return paths, txn


def test_confirm_over_a_connection_older_than_the_apply_is_refused(tmp_path):
    paths, txn = _txn(tmp_path, "aa11bb22", {"applied": True, "before": "", "after": "", "applied_at": 100.0})
    answer = confirmed.confirm(paths, "aa11bb22", connection_started=99.5, wait=0.2)
    assert answer["pending"] and answer["stale"]
    assert os.path.exists(os.path.join(txn, "armed"))


def test_confirm_renames_armed_and_returns_the_final_result(tmp_path):
    paths, txn = _txn(tmp_path, "aa11bb23", {"applied": True, "before": "b", "after": "a", "applied_at": 100.0},
                      final={"changed": True, "rolled_back": False, "msg": "replaced"})
    answer = confirmed.confirm(paths, "aa11bb23", connection_started=101.0, wait=0.5)
    assert answer["changed"] and answer["diff"]["before"] == "b" and answer["diff"]["after"] == "a"
    assert not os.path.exists(txn)


def test_confirm_after_expiry_reports_the_rollback(tmp_path):
    paths = _txn(tmp_path, "aa11bb24", {"applied": True, "before": "", "after": "", "applied_at": 1.0},
                 final={"rolled_back": True, "msg": "no confirmation"}, armed=False)[0]
    answer = confirmed.confirm(paths, "aa11bb24", connection_started=0.5, wait=0.5)
    assert answer["rolled_back"] is True


def test_confirm_of_an_unknown_or_malformed_token(tmp_path):
    paths = persist.Paths(str(tmp_path), None)
    with pytest.raises(MsegError):
        confirmed.confirm(paths, "0123456789abcdef")
    with pytest.raises(MsegError):
        confirmed.confirm(paths, "../../etc")
