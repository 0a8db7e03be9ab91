"""The agent's bounded trust in signed state (issue 15 items 4 and 13): fleet, serial jumps, replay state per key,
key rotation by endorsement, and what an upgrade does to the state an older agent left behind."""

import io

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.mseg.fleet.plugins.module_utils.agent import daemon
from ansible_collections.mseg.fleet.plugins.module_utils.agent import log as agent_log
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle

NOW = 1_800_000_000
RULESET = "table inet mseg {\n}\n"


def _key():
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return private, bundle.public_key_pem(private)


OLD, NEW = _key(), _key()


def envelope(serial, key=OLD, fleet="default", endorsement=None):
    return bundle.make_envelope("web-01", serial, "d" * 64, "enforce", RULESET + "# %d\n" % serial, NOW - 60,
                                NOW + 3600, key[0], fleet=fleet, endorsement=endorsement)


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


@pytest.fixture(name="agent")
def fixture_agent(tmp_path):
    answers = {}
    agent = daemon.Agent("web-01", str(tmp_path / "state"), OLD[1], agent_log.make_logger(None, io.StringIO()),
                         (), [("c1", 8443, "/v1/bundle")], fetcher=lambda controller, etag: answers["c1"],
                         applier=lambda content: {"changed": True, "msg": "applied"}, clock=Clock(), fleet="prod")
    agent.record_identity()
    agent.answers = answers
    yield agent
    agent.log.handlers = []


def poll(agent, raw):
    agent.answers["c1"] = (200, raw, None)
    return agent.poll_once()


def last_error(agent):
    return agent.state.read_json("status.json")["last_error"]["kind"]


def test_bundle_for_another_fleet_is_refused(agent):
    assert poll(agent, envelope(5, fleet="stage")) == "refused" and last_error(agent) == "fleet"
    assert poll(agent, envelope(5, fleet="prod")) == "applied"
    assert agent.state.read_json("identity.json")["fleet"] == "prod"


def test_serial_jump_is_refused(agent):
    assert poll(agent, envelope(5, fleet="prod")) == "applied"
    assert poll(agent, envelope(10 ** 30, fleet="prod")) == "refused" and last_error(agent) == "bounds"
    assert agent.meta()["serials"] == {bundle.key_id(OLD[1]): 5}


def test_rotation_recovers_from_a_leaked_key_and_retires_it_after_the_overlap(agent):
    old_id, new_id = bundle.key_id(OLD[1]), bundle.key_id(NEW[1])
    # the leaked old key drove the serial up as far as one step allows
    assert poll(agent, envelope(5, fleet="prod")) == "applied"
    assert poll(agent, envelope(5 + 10 ** 6, fleet="prod")) == "applied"
    # the operator rotates: the new key, endorsed by the old one for 10 minutes of overlap, restarts at serial 6
    endorsement = bundle.endorse(OLD[0], NEW[1], NOW - 60, NOW + 600, fleet="prod")
    assert poll(agent, envelope(6, key=NEW, fleet="prod", endorsement=endorsement)) == "applied"
    assert agent.meta()["serials"] == {old_id: 5 + 10 ** 6, new_id: 6}
    assert agent.meta()["retired"] == {old_id: NOW + 600}
    # within the overlap the old key still counts; after it, its bundles are refused
    assert poll(agent, envelope(6 + 10 ** 6, fleet="prod")) == "applied"
    agent.clock.now = NOW + 600
    assert poll(agent, envelope(7 + 10 ** 6, fleet="prod")) == "refused" and last_error(agent) == "signature"
    # the stored bundle (signed by the new key) still verifies on a restart, against the old trusted key
    assert poll(agent, envelope(7, key=NEW, fleet="prod", endorsement=endorsement)) == "applied"
    assert agent.desired()[1] == "serial 7 mode=enforce"


def test_upgrade_keeps_the_single_serial_of_an_older_agent_for_its_key(agent):
    raw = envelope(9, fleet="default")
    agent.fleet = "default"
    assert poll(agent, raw) == "applied"
    meta = agent.meta()
    agent.state.write_json("meta.json", {"serial": 9, "bundle": meta["bundle"]})  # what the previous release wrote
    assert agent.state.replay_state(agent.meta()) == {bundle.key_id(OLD[1]): 9}
    assert poll(agent, envelope(8)) == "refused" and last_error(agent) == "replay"
    assert poll(agent, envelope(10)) == "applied"
    assert agent.meta()["serials"] == {bundle.key_id(OLD[1]): 10}
