"""Boot restore on an agent host fails closed, never open (issue 15 item 10).

When the stored bundle cannot be restored (a key rotation, a truncated or deleted file), ``mseg-agent restore``
loads the judged JSON form of the last ruleset the agent applied (nft_apply's persisted format and restore script),
else the fail-closed table that keeps SSH open on the management ports. ``nft`` is a recording shell script here;
the script that runs it is the real one (``apply/templates/mseg-restore.sh``).
"""

import contextlib
import io
import json
import os

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.agent import cli, daemon
from ansible_collections.mseg.fleet.plugins.module_utils.agent import log as agent_log
from ansible_collections.mseg.fleet.plugins.module_utils.apply import persist
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract

from test_agent import OTHER_KEY, PUB, RULESET, Applier, envelope, make_agent

DOCUMENT = json.dumps({"nftables": [{"add": {"table": {"family": "inet", "name": "mseg"}}}]}) + "\n"
FAKE_NFT = """#!/bin/sh
echo "ARGS $*" >> {log}
cat >> {log}
exit 0
"""


@pytest.fixture
def log():
    stream = io.StringIO()
    logger = agent_log.make_logger(None, stream)
    logger.stream = stream
    yield logger
    logger.handlers = []


@pytest.fixture
def host(tmp_path, monkeypatch, log):
    """An agent that applied serial 5 (recorded by a fake applier); root's configuration; a recording nft."""
    nft = tmp_path / "nft"
    nft.write_text(FAKE_NFT.format(log=tmp_path / "nft.log"))
    nft.chmod(0o755)
    monkeypatch.setattr(daemon, "find_nft", lambda: str(nft))
    locks = []

    def fake_lock(paths, timeout, table_lock):
        locks.append(table_lock)
        return contextlib.nullcontext()

    monkeypatch.setattr(daemon, "lock", fake_lock)
    monkeypatch.setattr(daemon.Agent, "_apply_engine", lambda _agent, content: {"changed": True, "msg": "applied"})
    agent, _fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5), None)}, applier=Applier())
    assert agent.poll_once() == "applied"
    (tmp_path / "pub").write_bytes(PUB)
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({
        "host": "web-01", "controllers": ["c1"], "public_key": str(tmp_path / "pub"), "tls_cert": "/x/agent.crt",
        "tls_key": "/x/agent.key", "tls_ca": "/x/ca.crt", "state_dir": agent.state.dir,
        "log_file": str(tmp_path / "runtime.log"), "management_peers": ["192.0.2.10 2222"]}))
    os.makedirs(agent.state.nft_dir, exist_ok=True)
    return {"agent": agent, "argv": ["--config", str(config), "restore"], "nft_log": tmp_path / "nft.log",
            "runtime": tmp_path / "runtime.log", "locks": locks}


def _nft_log(host):
    return host["nft_log"].read_text() if host["nft_log"].exists() else ""


def _persist(host, text):
    with open(host["agent"].persisted_copy(), "w") as handle:
        handle.write(text)


def test_a_stored_bundle_that_verifies_is_restored_without_the_fallback(host):
    _persist(host, persist.persisted_text(DOCUMENT))
    assert cli.main(host["argv"]) == 0
    assert _nft_log(host) == ""


@pytest.mark.parametrize("damage", ["truncated", "rotated key", "deleted"])
def test_a_stored_bundle_that_fails_falls_back_to_the_last_applied_ruleset(host, damage):
    current = host["agent"].state.path("current.json")
    if damage == "deleted":
        os.unlink(current)
    else:
        with open(current, "wb") as handle:
            handle.write(b'{"payload": "tru' if damage == "truncated" else envelope(5, key=OTHER_KEY))
    _persist(host, persist.persisted_text(DOCUMENT))
    assert cli.main(host["argv"]) == 1
    loaded = _nft_log(host)
    # checked (nft -j -c), then loaded: the judged JSON form, never text, and never the fail-closed table
    assert "ARGS -j -c -f -\n" + DOCUMENT in loaded and "ARGS -j -f -\n" + DOCUMENT in loaded
    assert contract.FAILSAFE_MARKER not in loaded
    assert "loaded the last applied ruleset" in host["runtime"].read_text()
    assert host["locks"] == [contract.TABLE_LOCK]  # under the host-wide lock of the table


@pytest.mark.parametrize("copy", ["missing", "truncated", "edited"])
def test_without_a_sound_copy_the_fail_closed_table_keeps_management_access(host, copy):
    with open(host["agent"].state.path("current.json"), "wb") as handle:
        handle.write(b"")
    if copy == "truncated":
        _persist(host, persist.persisted_text(DOCUMENT)[:-10])
    elif copy == "edited":
        _persist(host, persist.persisted_text(DOCUMENT).replace('"mseg"', '"other"'))
    assert cli.main(host["argv"]) == 1
    loaded = _nft_log(host)
    assert "ARGS -j -f -" not in loaded
    assert "ARGS -f -\n" in loaded and "policy drop;" in loaded and contract.FAILSAFE_MARKER in loaded
    assert "tcp dport { 22, 2222 } accept" in loaded  # SSH and the configured management port stay open
    assert "fail-closed table" in host["runtime"].read_text()


def test_the_agent_persists_the_judged_form_it_applies(tmp_path, log, monkeypatch):
    requests = []
    monkeypatch.setattr(daemon, "apply", lambda request: requests.append(request) or {"changed": True, "msg": ""})
    agent = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, [("192.0.2.10", 22)], table_lock=None)
    agent._apply_engine(RULESET)
    (request,) = requests
    assert request.persist and request.paths.unit is None
    assert request.paths.ruleset_json == agent.persisted_copy() == os.path.join(agent.state.nft_dir, "ruleset.json")
