"""mseg.fleet.host_cli calls the host CLI: every command line it builds is one the CLI's own parser accepts, its
options are the CLI's verbs and modes, and the CLI's answers and one-line errors become the task's result."""

import pytest
import yaml

from ansible_collections.mseg.fleet.plugins.module_utils.agent import cli
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.modules import host_cli

OPTIONS = yaml.safe_load(host_cli.DOCUMENTATION)["options"]
PARAMS = {
    "status": {"command": "status"},
    "mode": {"command": "mode", "mode": "observe"},
    "rollback": {"command": "rollback"},
    "trace": {"command": "trace", "src": "10.0.0.1", "dst": "10.0.0.2", "port": "tcp/5432"},
}


def test_the_module_offers_the_verbs_and_modes_of_the_cli():
    assert OPTIONS["command"]["choices"] == list(contract.HOST_CLI_COMMANDS) == sorted(PARAMS, key=list(
        contract.HOST_CLI_COMMANDS).index)
    assert OPTIONS["mode"]["choices"] == host_cli.MODES == list(cli.MODES)
    assert host_cli.cli_path() == "%s/%s" % (contract.HOST_CLI_DIR, contract.HOST_CLI)


@pytest.mark.parametrize("command", contract.HOST_CLI_COMMANDS)
def test_every_command_line_parses_with_the_cli_and_asks_for_json(command):
    argv = host_cli.cli_argv(dict({"mode": None, "src": None, "dst": None, "port": None}, **PARAMS[command]))
    assert argv[0] == host_cli.cli_path()
    args = cli.parser(contract.HOST_CLI).parse_args(argv[1:])
    assert args.command == command and args.json is True
    for name, value in PARAMS[command].items():
        assert getattr(args, name) == value


def test_answers_and_errors():
    assert host_cli.read_answer(0, '{"mode": "enforce"}\n', "") == ({"mode": "enforce"}, None)
    # trace exits 3 for a dropped packet: still an answer
    assert host_cli.read_answer(3, '{"allowed": false}', "") == ({"allowed": False}, None)
    assert host_cli.read_answer(1, "", "mseg: there is no previous bundle to roll back to on this host\n") == (
        None, "mseg: there is no previous bundle to roll back to on this host")
    assert host_cli.read_answer(1, "", "") == (None, "exit status 1 and no answer")


@pytest.mark.parametrize("params, override, changed", [
    ({"command": "mode", "mode": "bypass"}, {"kind": "bypass"}, False),
    ({"command": "mode", "mode": "bypass"}, None, True),
    ({"command": "mode", "mode": "observe"}, {"kind": "mode", "mode": "observe"}, False),
    ({"command": "mode", "mode": "enforce"}, {"kind": "mode", "mode": "observe"}, True),
    ({"command": "mode", "mode": "clear"}, None, False),
    ({"command": "mode", "mode": "clear"}, {"kind": "rollback"}, True),
    ({"command": "rollback", "mode": None}, None, True),
])
def test_check_mode_predicts_from_the_status(params, override, changed):
    assert host_cli.predict_change(params, {"override": override}) is changed
