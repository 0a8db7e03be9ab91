"""The host CLI: its verbs are one table, the wire contract names the same verbs, every error is one line.

The verbs run against a real agent state directory (a real signed bundle accepted by a real ``Agent``); only the
nft apply is replaced by a recording fake. ``mseg trace`` needs root and namespaces: tests/integration/test_agent.py.
"""

import functools
import json
import logging
import os
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.mseg.fleet.plugins.module_utils.agent import cli, daemon, droplog
from ansible_collections.mseg.fleet.plugins.module_utils.agent import log as agent_log
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import Event

RULESET = "table inet mseg {\n}\n"


def test_the_contract_names_the_verbs_of_the_table():
    assert contract.AGENT_COMMANDS == tuple(v.name for v in cli.VERBS if v.program == contract.AGENT_COMMAND)
    assert contract.HOST_CLI_COMMANDS == tuple(v.name for v in cli.VERBS if v.program == contract.HOST_CLI)
    assert {v.program for v in cli.VERBS} == {contract.AGENT_COMMAND, contract.HOST_CLI}


def test_the_parser_is_built_from_the_table(capsys):
    parser = cli.parser(contract.HOST_CLI)
    for verb in cli.VERBS:
        with pytest.raises(SystemExit):
            parser.parse_args([verb.name, "--help"])
        assert verb.help.split(" (")[0] in " ".join(capsys.readouterr().out.split())
    args = parser.parse_args(["trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--port", "tcp/22", "--json"])
    assert (args.command, args.src, args.json) == ("trace", "10.0.0.1", True)
    assert parser.parse_args(["mode", "clear"]).mode == "clear"


@pytest.mark.parametrize("argv, words", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["mode"], "the following arguments are required: mode"),
    (["mode", "open"], "invalid choice: 'open'"),
    (["trace", "--src", "10.0.0.1"], "the following arguments are required: --dst, --port"),
])
def test_usage_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mseg") and words in err and "usage:" not in err
    assert err.rstrip().endswith("(see %s --help)" % err.split(":")[0])


@pytest.fixture(autouse=True)
def _keep_environment():
    """As root the operator's verbs clear the environment and move to /: give the test process its own back."""
    saved, where = dict(os.environ), os.getcwd()
    yield
    os.environ.clear()
    os.environ.update(saved)
    os.chdir(where)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--state-dir", str(tmp_path), "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mseg: ") and "the agent has not run" in err and "Traceback" not in err
    assert cli.main(["--state-dir", str(tmp_path), "--config", str(tmp_path / "agent.json"), "mode", "observe"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mseg: ") and ("the agent is not configured on this host" if os.geteuid() == 0 else
                                         "the agent has never started on this host") in err


def test_an_operating_system_error_is_one_line_too(tmp_path, monkeypatch, capsys):
    def denied(path, root_owned=True):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(cli, "read_checked", denied)
    assert cli.main(["--state-dir", str(tmp_path), "status", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "mseg: %s: Permission denied\n" % (tmp_path / "status.json") and captured.out == ""


def test_status_text():
    status = {"host": "web-01", "mode": "bypass", "override": {"kind": "bypass", "set_at": "T", "set_by": "alice"},
              "bundle": {"serial": 6, "policy_digest": "d" * 64, "ruleset_sha256": "e" * 64, "created_at": "C",
                         "valid_until": "V"},
              "last_poll": {"at": "P", "controller": None, "result": "unreachable", "detail": "c1: timed out"}}
    text = cli.format_status(status, [("rule_1024_in", 3, 180)])
    assert "mode         bypass (local override bypass since T by alice; 'mseg mode clear' ends it)" in text
    assert "serial       6" in text and "policy       " + "d" * 64 in text
    assert "last poll    P (no controller): unreachable (c1: timed out)" in text
    assert "rule_1024_in" in text and "180 bytes" in text
    assert "unavailable" in cli.format_status(status, None)


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A state directory in which the agent accepted serials 1 and 2; applies are recorded, not run."""
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    applied = []

    def apply_engine(_agent, content):
        changed = not applied or applied[-1] != content
        applied.append(content)
        return {"changed": changed, "msg": "replaced table inet mseg" if changed else "already matches"}

    monkeypatch.setattr(daemon.Agent, "_apply_engine", apply_engine)
    state = tmp_path / "state"
    answers = []
    agent = daemon.Agent("web-01", str(state), bundle.public_key_pem(key), agent_log.make_logger(None), (),
                         [("c1", 8443, "/v1/bundle")], fetcher=lambda *_: answers[-1])
    agent.record_identity()
    for serial in (1, 2):
        answers.append((200, bundle.make_envelope("web-01", serial, "d" * 64, "enforce",
                                                  RULESET + "# serial %d\n" % serial, time.time() - 60,
                                                  time.time() + 86400, key), None))
        assert agent.poll_once() == "applied"
    # root's configuration, as the agent role writes it (root-owned, 0600 and 0644)
    (tmp_path / "bundle-signing.pub").write_bytes(bundle.public_key_pem(key))
    (tmp_path / "agent.json").write_text(json.dumps({
        "host": "web-01", "controllers": ["https://c1:8443/v1/bundle"], "public_key": str(tmp_path / "bundle-signing.pub"),
        "tls_cert": "/x/agent.crt", "tls_key": "/x/agent.key", "tls_ca": "/x/ca.crt"}))
    os.chmod(str(tmp_path / "agent.json"), 0o600)
    yield ["--state-dir", str(state), "--log-file", str(tmp_path / "runtime.log"),
           "--config", str(tmp_path / "agent.json")], applied


def _answer(host, capsys, *argv):
    options, _applied = host
    assert cli.main(options + list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mode_and_rollback_answer_in_json_whether_they_changed_the_host(host, capsys):
    _options, applied = host
    bypass = _answer(host, capsys, "mode", "bypass")
    assert (bypass["changed"], bypass["mode"], bypass["override"]["kind"]) == (True, "bypass", "bypass")
    assert bypass["msg"].startswith("mode bypass set locally: replaced table inet mseg")
    assert contract.BYPASS_MARKER in applied[-1]
    again = _answer(host, capsys, "mode", "bypass")
    assert (again["changed"], again["mode"]) == (False, "bypass")
    cleared = _answer(host, capsys, "mode", "clear")
    assert (cleared["changed"], cleared["mode"], cleared["override"]) == (True, "enforce", None)
    assert applied[-1] == RULESET + "# serial 2\n"
    nothing = _answer(host, capsys, "mode", "clear")
    assert nothing == {"changed": False, "mode": "enforce", "override": None,
                       "msg": "no local override is set; the agent follows the controllers"}
    back = _answer(host, capsys, "rollback")
    assert back["changed"] and back["override"]["bundle"]["serial"] == 1 and applied[-1] == RULESET + "# serial 1\n"
    assert back["msg"] == "rolled back to the previous bundle: replaced table inet mseg"


def test_status_answers_in_json_and_in_words(host, capsys, monkeypatch):
    options, _applied = host
    monkeypatch.setattr(cli, "counters", lambda: [("rule_1024_in", 3, 180)])
    status = _answer(host, capsys, "status")
    assert (status["serial"], status["mode"], status["host"]) == (2, "enforce", "web-01")
    assert status["counters"] == [{"name": "rule_1024_in", "packets": 3, "bytes": 180}]
    assert cli.main(options + ["status"]) == 0
    assert "serial       2 " in capsys.readouterr().out


def _agent_writes(path, data):
    """What a compromised agent user does to a file of its state directory."""
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    if os.geteuid() == 0:
        os.chown(str(path), 65534, 65534)


def test_root_never_takes_the_bundle_key_from_the_agents_state(host, capsys, tmp_path):
    """The attack: the agent user records its own key in identity.json and a bundle signed with it; root's
    'mseg mode enforce' then loaded the attacker's ruleset. Root verifies with the key of its own configuration."""
    if os.geteuid() != 0:
        pytest.skip("the root CLI's behaviour needs root")
    options, applied = host
    state = tmp_path / "state"
    evil = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    identity = json.loads((state / "identity.json").read_text())
    identity["public_key"] = bundle.public_key_pem(evil).decode("ascii")
    _agent_writes(state / "identity.json", json.dumps(identity))
    _agent_writes(state / "current.json", bundle.make_envelope("web-01", 99, "d" * 64, "enforce",
                                                               "table inet mseg {}\n# EVIL\n", time.time() - 60, time.time() + 86400, evil))
    before = list(applied)
    assert cli.main(options + ["mode", "enforce"]) == 1
    assert "failed verification" in capsys.readouterr().err
    assert applied == before and not any("EVIL" in text for text in applied)


def test_root_refuses_a_configuration_the_agent_user_could_write(host, capsys, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the root CLI's behaviour needs root")
    options, _applied = host
    os.chown(str(tmp_path / "bundle-signing.pub"), 65534, 65534)
    assert cli.main(options + ["mode", "enforce"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mseg: %s is owned by uid 65534" % (tmp_path / "bundle-signing.pub")) and "chown root" in err


def test_status_neither_hangs_on_a_fifo_nor_prints_control_characters(host, capsys, monkeypatch, tmp_path):
    options, _applied = host
    monkeypatch.setattr(cli, "counters", lambda: [])
    status_file = tmp_path / "state" / "status.json"
    status = json.loads(status_file.read_text())
    status["last_error"] = {"at": "T", "kind": "x", "msg": "boom\x1b]0;owned\x07\nlast apply   forged"}
    _agent_writes(status_file, json.dumps(status))
    assert cli.main(options + ["status"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\nlast apply   forged" not in out
    assert "boom\\x1b]0;owned\\x07\\x0alast apply   forged" in out
    status_file.unlink()
    os.mkfifo(str(status_file))
    assert cli.main(options + ["status"]) == 1
    assert "is not a regular file (a FIFO)" in capsys.readouterr().err


def test_the_operators_verbs_run_as_root_from_slash_with_a_clean_environment(host, monkeypatch, capsys):
    if os.geteuid() != 0:
        pytest.skip("the root CLI's behaviour needs root")
    options, _applied = host
    monkeypatch.setenv("PYTHONPATH", "/tmp/planted")
    monkeypatch.setenv("SUDO_USER", "alice")
    seen = {}

    def status(_args, _argv):
        seen.update(cwd=os.getcwd(), env=dict(os.environ))
        return 0

    monkeypatch.setitem(cli.VERB, "status", cli.VERB["status"]._replace(handler=status))
    assert cli.main(options + ["status"]) == 0
    assert seen == {"cwd": "/", "env": dict(cli.ROOT_ENV, SUDO_USER="alice")}


def test_the_runtime_log_keeps_untrusted_text_on_one_line(tmp_path):
    path = tmp_path / "runtime.log"
    log = agent_log.make_logger(str(path))
    log.error("bundle refused from %s: %s", "c1", "bad\n2026-01-01T00:00:00Z INFO Policy Drop: ID=1 forged\x1b[2J")
    for handler in log.handlers:
        handler.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "\\x0a2026-01-01T00:00:00Z INFO Policy Drop" in lines[0] and "\x1b" not in lines[0]


class _OneEventReader:
    """NflogReader's stand-in for the droplog verb: one record, then the service is told to stop."""

    groups = sorted(contract.NFLOG_GROUP.values())
    records = malformed = overruns = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def events(self, stop, tick):
        tick()
        yield Event("AUDIT", 30, "ingress", "10.0.1.2", "10.0.2.1", "tcp", 5432)
        stop.set()


def test_droplog_collects_without_an_agent_into_the_runtime_log_the_report_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DropLog", functools.partial(droplog.DropLog, reader=_OneEventReader))
    path = str(tmp_path / "runtime.log")
    try:
        assert cli.main(["--log-file", path, "droplog", "--host", "web-01"], prog=contract.AGENT_COMMAND) == 0
    finally:
        logging.getLogger(agent_log.LOGGER).handlers = []
    with open(path, encoding="utf-8") as handle:
        parsed = [droplog.parse_runtime_line(line.rstrip("\n")) for line in handle]
    read = [item[1] for item in parsed if item]
    assert [type(item).__name__ for item in read] == ["Heartbeat", "Event"]
    assert read[0].host == "web-01" and read[1].rule == 30 and read[1].dport == 5432


def test_droplog_refuses_a_host_name_its_heartbeat_cannot_carry(tmp_path, capsys):
    path = str(tmp_path / "runtime.log")
    assert cli.main(["--log-file", path, "droplog", "--host", "web 01\n"], prog=contract.AGENT_COMMAND) == 1
    assert "--host 'web 01\\x0a' is not a host name" in capsys.readouterr().err
    assert not os.path.exists(path)
