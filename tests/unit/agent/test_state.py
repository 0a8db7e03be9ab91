"""The agent's state files as root's CLI reads them: never a FIFO wait, never a followed link."""

import json
import os
import threading

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.agent.state import State
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError


def _read_in_thread(call):
    """Run ``call`` in a daemon thread; (finished within 2 s, its outcome)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except MsegError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(2)
    return not thread.is_alive(), outcome


@pytest.mark.parametrize("name", ["current.json", "override.json", "meta.json"])
def test_a_fifo_planted_in_the_state_directory_is_refused_not_waited_on(tmp_path, name):
    state = State(str(tmp_path))
    os.mkfifo(state.path(name))
    finished, outcome = _read_in_thread(lambda: state.read_json(name))
    assert finished, "read_json(%r) blocked on a FIFO" % name
    assert "is not a regular file (a FIFO)" in outcome["error"] and name in outcome["error"]


def test_a_symbolic_link_in_the_state_directory_is_not_followed(tmp_path):
    secret = tmp_path / "root-only"
    secret.write_text(json.dumps({"kind": "bypass"}))
    state = State(str(tmp_path / "state"))
    state.ensure()
    os.symlink(str(secret), state.path("override.json"))
    with pytest.raises(MsegError, match="symbolic link"):
        state.read_bytes("override.json")


def test_regular_state_files_read_as_before(tmp_path):
    state = State(str(tmp_path))
    assert state.read_json("meta.json", {}) == {} and state.read_bytes("current.json") is None
    (tmp_path / "meta.json").write_text(json.dumps({"serial": 7}))
    (tmp_path / "override.json").write_text("[" * 100000)
    assert state.read_json("meta.json") == {"serial": 7}
    assert state.read_json("override.json", "default") == "default"
