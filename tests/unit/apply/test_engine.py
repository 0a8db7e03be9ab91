"""The apply engine (plugins/module_utils/apply/engine.py): its lock and its request."""

import os

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine, persist
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError


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
