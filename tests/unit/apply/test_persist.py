"""The engine's files (plugins/module_utils/apply/persist.py): state directory, atomic writes, the persisted copy."""

import os
import threading

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply import persist
from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract, files
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.tests.unit.nft.samples import json_form


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
    assert not persist.persisted_ok(paths, "table inet mseg {}\n", "{}")  # no JSON form: written by an older release
    files.write_atomic(paths.ruleset_json, persist.persisted_text("{}"))
    assert persist.persisted_ok(paths, "table inet mseg {}\n", "{}")
    assert not persist.persisted_ok(paths, "table inet mseg { }\n", "{}")
    assert not persist.persisted_ok(paths, "table inet mseg {}\n", "{ }")


def test_the_fail_closed_table_of_the_boot_restore_keeps_to_the_contract(tmp_path):
    """The restore script's fail-closed table is a ruleset too: its names and log channels are the contract's."""
    paths = persist.Paths(str(tmp_path / "mseg"), str(tmp_path / "units"))
    persist.prepare_state_dir(paths)
    persist.persist(paths, "table inet mseg {\n}\n", [("192.0.2.10", 2222)], "/usr/sbin/nft",
                    persist.restore_templates(), "{}")
    script = open(paths.script).read()
    table = script.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert "counter %s {" % contract.FAILSAFE_MARKER in table and "tcp dport { 22, 2222 } accept" in table
    assert contract.check_ruleset(json_form(table)) == []
    assert "ExecStart=/bin/sh %s\n" % paths.script in open(paths.unit).read()
