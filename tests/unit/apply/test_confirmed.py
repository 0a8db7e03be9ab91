"""Commit-confirmed (plugins/module_utils/apply/confirmed.py): the confirm side, over fresh and stale connections."""

import json
import os

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply import confirmed, persist
from ansible_collections.mseg.fleet.plugins.module_utils.common import files
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError


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


def _worker_view(tmp_path, live):
    """The detached worker's engine at the end of an unconfirmed window: the fake kernel holds ``live``."""
    from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine as apply_engine
    from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner
    from ansible_collections.mseg.fleet.tests.unit.nft.fake import FakeNft

    fake = FakeNft()
    fake.edit(live)
    request = apply_engine.Request("", "absent", persist=False, state_dir=str(tmp_path), unit_dir=None)
    return apply_engine.Engine(request, runner.Nft(fake.path, fake)), fake


APPLIED = "table inet mseg {\n# serial 2 (the unconfirmed apply)\n}\n"
BACKUP = "table inet mseg {}\ndelete table inet mseg\ntable inet mseg {\n# serial 1\n}\n"


def test_an_unconfirmed_apply_is_rolled_back_over_its_own_table(tmp_path):
    engine, fake = _worker_view(tmp_path, APPLIED)
    applied = engine.nft.listing()
    final = confirmed.roll_back(engine, BACKUP, applied, 5)
    assert final["rolled_back"] is True
    assert "# serial 1" in fake.loads[-1]


def test_a_rollback_never_restores_over_a_newer_table(tmp_path):
    """A newer policy (the agent, a bypass, another state_dir) went live during the window: the late rollback of
    the older apply must leave it alone and say so."""
    engine, fake = _worker_view(tmp_path, APPLIED)
    applied = engine.nft.listing()
    fake.edit("table inet mseg {\ncounter emergency_bypass {\n}\n}\n")
    loads = list(fake.loads)
    final = confirmed.roll_back(engine, BACKUP, applied, 5)
    assert final["rolled_back"] is False and final["superseded"] and final["failed"]
    assert "was NOT restored" in final["msg"]
    assert fake.loads == loads
    assert "emergency_bypass" in engine.nft.listing()
