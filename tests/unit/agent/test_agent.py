"""The agent's engine: verification outcomes, failover, overrides, restore and the drop log, with real bundles.

Bundles are real (Ed25519 keys made here, bundle.make_envelope); only the network fetch and the nft apply are
replaced by recording fakes. The real apply and the real HTTPS path are proven in tests/integration/test_agent.py
and on the lab (molecule/agent).
"""

import io
import json
import logging
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.mseg.fleet.plugins.module_utils.agent import config, daemon
from ansible_collections.mseg.fleet.plugins.module_utils.agent import log as agent_log
from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.apply.errors import ApplyError
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle

NOW = 1_800_000_000
RULESET = "table inet mseg {\n    set mgmt_auto_v4 {\n        type ipv4_addr . inet_service\n    }\n}\n"


def _key():
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, bundle.public_key_pem(private)


KEY, PUB = _key()
OTHER_KEY, _OTHER_PUB = _key()


def envelope(serial, host="web-01", mode="enforce", key=KEY, created=NOW - 60, until=NOW + 3600, ruleset=None,
             mode_rulesets=None):
    return bundle.make_envelope(host, serial, "d" * 64, mode, ruleset or RULESET + "# serial %d\n" % serial,
                                created, until, key, mode_rulesets)


class Fetcher:
    """Controllers as a dict url-host -> list of answers: (status, body, etag) or an OSError to raise."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, controller, etag):
        self.calls.append((controller[0], etag))
        answer = self.answers.get(controller[0], OSError("no answer"))  # a controller not set up is unreachable
        if isinstance(answer, Exception):
            raise answer
        return answer


class Applier:
    def __init__(self, fail=None):
        self.applied = []
        self.fail = fail

    def __call__(self, content):
        if self.fail:
            raise ApplyError(self.fail)
        changed = not self.applied or self.applied[-1] != content
        self.applied.append(content)
        return {"changed": changed, "msg": "replaced table inet mseg" if changed else "already matches"}


@pytest.fixture
def log():
    stream = io.StringIO()
    logger = agent_log.make_logger(None, stream)
    logger.stream = stream
    yield logger
    logger.handlers = []


def make_agent(tmp_path, log, answers=None, applier=None, controllers=("c1", "c2")):
    fetcher = Fetcher(answers or {})
    agent = daemon.Agent("web-01", str(tmp_path / "state"), PUB, log, [("192.0.2.10", 22)],
                         [(c, 8443, "/v1/bundle") for c in controllers], 2.0, 0.2,
                         fetcher=fetcher, applier=applier or Applier(), clock=lambda: NOW)
    agent.record_identity()
    return agent, fetcher


def test_new_bundle_is_applied_and_recorded(tmp_path, log):
    raw = envelope(5)
    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, raw, '"e5"')})
    assert agent.poll_once() == "applied"
    assert agent.applier.applied == [RULESET + "# serial 5\n"]
    status = agent.state.read_json("status.json")
    assert (status["serial"], status["mode"], status["last_poll"]["result"]) == (5, "enforce", "applied")
    assert status["bundle"]["policy_digest"] == "d" * 64
    assert "bundle serial 5 mode=enforce" in log.stream.getvalue()
    # the next poll sends the ETag; a 304 changes nothing
    fetcher.answers["c1"] = (304, b"", '"e5"')
    assert agent.poll_once() == "unchanged"
    assert fetcher.calls[-1] == ("c1", '"e5"')
    assert len(agent.applier.applied) == 1
    for name in ("current.json", "meta.json", "status.json", "identity.json"):
        assert os.stat(agent.state.path(name)).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("raw, kind, words", [
    (envelope(6, key=OTHER_KEY), "signature", "signature mismatch"),
    (envelope(6, host="db-01"), "host", "names another host"),
    (envelope(6, until=NOW - 1, created=NOW - 100), "expired", "expired"),
    (envelope(6, created=NOW + 3600, until=NOW + 7200), "not_yet_valid", "not yet valid"),
    (b"{not json", "format", "malformed"),
])
def test_refused_bundles_keep_the_old_policy(tmp_path, log, raw, kind, words):
    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5), '"e5"')})
    assert agent.poll_once() == "applied"
    fetcher.answers["c1"] = (200, raw, '"bad"')
    assert agent.poll_once() == "refused"
    assert len(agent.applier.applied) == 1
    status = agent.state.read_json("status.json")
    assert status["serial"] == 5 and status["last_error"]["kind"] == kind
    assert "bundle refused from https://c1:8443/v1/bundle: %s" % words in log.stream.getvalue()
    assert agent.state.read_bytes("current.json") == envelope(5)


def test_tampered_payload_is_a_signature_mismatch(tmp_path, log):
    outer = json.loads(envelope(7))
    payload = json.loads(bundle.base64.b64decode(outer["payload"]))
    payload["ruleset"] = RULESET + "# evil\n"
    payload["ruleset_sha256"] = bundle.hashlib.sha256(payload["ruleset"].encode()).hexdigest()
    outer["payload"] = bundle.base64.b64encode(bundle.canonical_json(payload)).decode()
    agent, _fetcher = make_agent(tmp_path, log, {"c1": (200, json.dumps(outer).encode(), None)})
    assert agent.poll_once() == "refused"
    assert agent.applier.applied == []
    assert "signature mismatch" in log.stream.getvalue()


def test_older_or_equal_serial_is_a_replay(tmp_path, log):
    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(9), None)})
    assert agent.poll_once() == "applied"
    for serial in (8, 9):
        fetcher.answers["c1"] = (200, envelope(serial, ruleset=RULESET + "# other %d\n" % serial), None)
        assert agent.poll_once() == "refused"
    assert agent.state.read_json("status.json")["last_error"]["kind"] == "replay"
    assert len(agent.applier.applied) == 1


def test_failover_and_preferred_controller(tmp_path, log):
    agent, fetcher = make_agent(tmp_path, log, {"c1": OSError("connection refused"), "c2": (200, envelope(3), None)})
    assert agent.poll_once() == "applied"
    assert [c for c, _e in fetcher.calls] == ["c1", "c2"]
    assert "failover to https://c2:8443/v1/bundle after https://c1:8443/v1/bundle: connection refused" \
        in log.stream.getvalue()
    fetcher.answers["c2"] = (304, b"", None)
    assert agent.poll_once() == "unchanged"
    assert fetcher.calls[-1][0] == "c2"  # the controller that answered is tried first


def test_a_replica_serving_a_refused_bundle_does_not_hold_the_agent_back(tmp_path, log):
    # c1 serves a forged bundle (or a stale serial after a missed publish): it counts as failed, c2 is asked at once
    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5, key=OTHER_KEY), '"forged"'),
                                                "c2": (200, envelope(5), '"e5"')})
    assert agent.poll_once() == "applied"
    assert agent.state.read_json("status.json")["serial"] == 5
    assert "failover to https://c2:8443/v1/bundle after https://c1:8443/v1/bundle: bundle refused " \
        "(signature mismatch)" in log.stream.getvalue()
    fetcher.answers["c2"] = (304, b"", '"e5"')
    assert agent.poll_once() == "unchanged"
    assert fetcher.calls[-1] == ("c2", '"e5"')  # the good replica is preferred, with the accepted ETag
    # the good replica goes away: the bad one is asked with the refused ETag, its 304 is still a refusal
    fetcher.answers["c2"] = OSError("connection refused")
    fetcher.answers["c1"] = (304, b"", '"forged"')
    assert agent.poll_once() == "refused"
    assert agent.poll_once() == "refused"
    assert fetcher.calls[-1] == ("c1", '"forged"')
    text = log.stream.getvalue()
    assert text.count("no controller serves a bundle this host accepts (https://c2:8443/v1/bundle: connection "
                      "refused; https://c1:8443/v1/bundle: still serves the bundle refused before)") == 1
    assert text.count("bundle refused from") == 1  # refused once, not downloaded and refused on every poll
    # it comes back with the next serial: applied, whatever c1 still serves
    fetcher.answers["c2"] = (200, envelope(6), '"e6"')
    assert agent.poll_once() == "applied"
    assert agent.state.read_json("status.json")["serial"] == 6
    assert agent.applier.applied[-1] == RULESET + "# serial 6\n"


def test_every_controller_down_keeps_the_policy(tmp_path, log):
    agent, _fetcher = make_agent(tmp_path, log, {"c1": OSError("timed out"), "c2": OSError("no route")})
    assert agent.poll_once() == "unreachable"
    assert agent.poll_once() == "unreachable"
    assert log.stream.getvalue().count("every controller is unreachable") == 1  # logged once while it lasts
    assert agent.state.read_json("status.json")["last_poll"]["result"] == "unreachable"


def test_failed_apply_keeps_the_last_good_bundle(tmp_path, log):
    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5), '"e5"')})
    agent.poll_once()
    agent.applier.fail = "nft rejected the ruleset"
    fetcher.answers["c1"] = (200, envelope(6), '"e6"')
    assert agent.poll_once() == "failed"
    assert agent.meta()["serial"] == 5 and agent.meta()["etag"] == '"e5"'  # retried next poll
    assert agent.state.read_bytes("current.json") == envelope(5)


def test_bypass_override_holds_new_bundles_until_cleared(tmp_path, log):
    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5), None)})
    agent.poll_once()
    agent.bypass("alice")
    assert "counter name \"mode_bypass\"" in agent.applier.applied[-1]
    assert agent.state.read_json("status.json")["mode"] == "bypass"
    fetcher.answers["c1"] = (200, envelope(6), None)
    assert agent.poll_once() == "held"
    assert "mode_bypass" in agent.applier.applied[-1]
    assert agent.meta()["serial"] == 6
    # a restart (new Agent object) keeps the override
    again, _f = make_agent(tmp_path, log, {"c1": (304, b"", None)})
    again.apply_desired("start")
    assert "mode_bypass" in again.applier.applied[-1]
    result, message = again.clear_override("alice")
    assert message == "cleared the local override bypass" and result["changed"]
    assert again.applier.applied[-1] == RULESET + "# serial 6\n"
    assert "mode bypass set by alice" in log.stream.getvalue()
    assert "cleared by alice" in log.stream.getvalue()


def test_rollback_applies_the_previous_bundle_and_never_lowers_the_serial(tmp_path, log):
    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5), None)})
    agent.poll_once()
    fetcher.answers["c1"] = (200, envelope(6), None)
    agent.poll_once()
    agent.rollback("bob")
    assert agent.applier.applied[-1] == RULESET + "# serial 5\n"
    assert agent.meta()["serial"] == 6
    assert agent.state.read_json("status.json")["override"]["bundle"]["serial"] == 5
    fetcher.answers["c1"] = (200, envelope(7), None)
    assert agent.poll_once() == "held"
    agent.clear_override("bob")
    assert agent.applier.applied[-1] == RULESET + "# serial 7\n"


def test_rollback_without_previous_bundle(tmp_path, log):
    agent, _fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5), None)})
    agent.poll_once()
    with pytest.raises(AgentError, match="no previous bundle"):
        agent.rollback("bob")
    assert agent.state.read_json("override.json") is None


def test_restore_reverifies_the_stored_bundle(tmp_path, log):
    agent, _fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5, until=NOW + 10), None)})
    agent.poll_once()
    # at boot, long after the validity window: the last good bundle is still restored (keep the last good policy)
    later = daemon.Agent("web-01", agent.state.dir, PUB, log, applier=Applier(), clock=lambda: NOW + 86400)
    later.apply_desired("boot restore")
    assert later.applier.applied == [RULESET + "# serial 5\n"]
    # a stored bundle that was tampered with on disk is not applied
    with open(agent.state.path("current.json"), "wb") as handle:
        handle.write(envelope(5, key=OTHER_KEY))
    with pytest.raises(AgentError, match="signature mismatch"):
        later.apply_desired("boot restore")
    assert len(later.applier.applied) == 1


def test_nothing_to_restore(tmp_path, log):
    agent, _fetcher = make_agent(tmp_path, log)
    assert agent.apply_desired("boot restore") is None
    assert "no bundle received yet" in log.stream.getvalue()


def test_config_validation_names_every_problem(tmp_path):
    good = {"host": "web-01", "controllers": ["10.0.0.1", "https://[fd00::1]:9443/x"], "public_key": "/k.pub",
            "tls_cert": "/a.crt", "tls_key": "/a.key", "tls_ca": "/ca.crt", "management_peers": ["192.0.2.1 22"]}
    parsed = config.Config(good)
    assert parsed.controllers == [("10.0.0.1", 8443, "/v1/bundle"), ("fd00::1", 9443, "/x")]
    assert parsed.peers == [("192.0.2.1", 22)]
    bad = dict(good, controllers=["http://x"], interval=0, jitter=1.5, droplog="syslog", colour="red",
               management_peers=["nope"])
    del bad["tls_ca"]
    with pytest.raises(AgentError) as info:
        config.Config(bad, "/etc/mseg/agent.json")
    text = str(info.value)
    for words in ("unknown key(s) colour", "missing tls_ca", "only https", "interval must be", "jitter is a "
                  "fraction", "droplog must be one of", "management peer 'nope'", "/etc/mseg/agent.json"):
        assert words in text
    with pytest.raises(AgentError, match="droplog 'journal' is gone: the drop log reads the ruleset's NFLOG"):
        config.Config(dict(good, droplog="journal"))
    assert config.Config(good).droplog == "nflog"


def test_config_files_come_from_credentials(tmp_path, monkeypatch):
    (tmp_path / "agent.key").write_text("k")
    parsed = config.Config({"host": "h", "controllers": ["c"], "public_key": "/etc/mseg/bundle-signing.pub",
                            "tls_cert": "/etc/mseg/tls/agent.crt", "tls_key": "/etc/mseg/tls/agent.key",
                            "tls_ca": "/etc/mseg/tls/ca.crt"}, credentials=str(tmp_path))
    assert parsed.file("tls_key") == str(tmp_path / "agent.key")
    assert parsed.file("tls_cert") == "/etc/mseg/tls/agent.crt"


def test_local_observe_mode_runs_the_signed_observe_ruleset_until_cleared(tmp_path, log):
    def observe(serial):
        return RULESET + "# serial %d observe\n" % serial

    agent, fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5, mode_rulesets={"observe": observe(5)}),
                                                       None)})
    agent.poll_once()
    agent.set_mode("observe", "alice")
    assert agent.applier.applied[-1] == observe(5)
    assert agent.state.read_json("status.json")["mode"] == "observe"
    # a new bundle is applied in the locally chosen mode
    fetcher.answers["c1"] = (200, envelope(6, mode_rulesets={"observe": observe(6)}), None)
    assert agent.poll_once() == "applied"
    assert agent.applier.applied[-1] == observe(6)
    # a restart keeps it; clearing returns to the mode the controllers signed
    again, _f = make_agent(tmp_path, log, {"c1": (304, b"", None)})
    again.apply_desired("start")
    assert again.applier.applied[-1] == observe(6)
    _result, message = again.clear_override("alice")
    assert message == "cleared the local override mode"
    assert again.applier.applied[-1] == RULESET + "# serial 6\n"
    assert "mode observe set by alice" in log.stream.getvalue()


def test_local_mode_needs_a_bundle_that_carries_it(tmp_path, log):
    agent, _fetcher = make_agent(tmp_path, log, {"c1": (200, envelope(5), None)})
    agent.poll_once()
    with pytest.raises(AgentError, match="carries no observe ruleset"):
        agent.set_mode("observe", "alice")
    assert agent.state.read_json("override.json") is None
    assert agent.applier.applied[-1] == RULESET + "# serial 5\n"


def test_logger_writes_runtime_log(tmp_path):
    path = tmp_path / "runtime.log"
    logger = agent_log.make_logger(str(path))
    logger.info("Policy Drop: ID=1024 src=10.0.1.5")
    for handler in logger.handlers:
        handler.flush()
    logger.handlers = []
    assert path.read_text().split(" ", 1)[1].strip() == "INFO Policy Drop: ID=1024 src=10.0.1.5"
    logging.getLogger(agent_log.LOGGER).handlers = []
