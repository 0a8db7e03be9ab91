"""mseg-cli's command line: verbs, usage errors and their exit status, host mode, completion."""

import os
import subprocess

import pytest

from mseg_cli import main as cli
from mseg_cli.errors import BAD_INPUT, DENIED, OK


def run(capsys, *argv):
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv, message", [
    (["mode", "set", "audit", "--all-zones"], "invalid choice: 'audit'"),
    (["mode", "set", "enforce", "--zone", "a", "--limit", "b"], "not allowed with argument"),
    (["-i", "inv", "mode", "set", "enforce"], "say which hosts: --all-zones, --zone ZONE or --limit HOSTS"),
    (["-i", "inv", "mode", "set", "clear", "--all-zones"], "run it on that host"),
    (["trace", "--src", "a"], "the following arguments are required: --dst, --port"),
    (["-i", "inv", "tag", "add", "--id", "a"], "give at least one label"),
    (["-i", "inv", "tag", "add", "--id", "a", "--env"], "--env needs a value"),
    (["-i", "inv", "tag", "add", "--id", "a", "--b@d", "x"], "--b@d is not --LABEL VALUE"),
    (["status", "--bogus"], "unrecognized arguments: --bogus"),
    (["policy", "commit", "--atomic"], "give the inventory with -i INVENTORY or MSEG_INVENTORY"),
    (["-i", "/nonexistent/inventory", "status"], "inventory /nonexistent/inventory: no such file or directory"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(cli, "HOST_CLI", "/nonexistent/mseg")
    monkeypatch.delenv("MSEG_INVENTORY", raising=False)
    status, out, err = run(capsys, *argv)
    assert status == BAD_INPUT and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_everywhere_names_the_exit_statuses(capsys):
    for argv in ([], ["tag", "add"], ["mode", "set"], ["policy", "commit"], ["trace"], ["discover"], ["status"]):
        status, out, _err = run(capsys, *(argv + ["--help"]))
        assert status == OK and "exit status:" in out and "2    usage or bad input" in out, argv


@pytest.fixture(name="host_cli")
def fixture_host_cli(tmp_path, monkeypatch):
    """A stand-in for /usr/sbin/mseg that records its arguments and exits 3 for trace (a dropped packet)."""
    log = tmp_path / "argv"
    script = tmp_path / "mseg"
    script.write_text('#!/bin/sh\necho "$@" >> %s\n[ "$1" = trace ] && exit 3\nexit 0\n' % log)
    script.chmod(0o755)
    monkeypatch.setattr(cli, "HOST_CLI", str(script))
    monkeypatch.delenv("MSEG_INVENTORY", raising=False)
    return log


def test_on_a_host_the_verbs_act_on_that_host_through_its_host_cli(capsys, host_cli):
    assert run(capsys, "mode", "set", "bypass")[0] == OK
    assert run(capsys, "status")[0] == OK
    assert run(capsys, "trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--port", "tcp/5432")[0] == DENIED
    assert host_cli.read_text().splitlines() == [
        "mode bypass", "status", "trace --src 10.0.0.1 --dst 10.0.0.2 --port tcp/5432"]


def test_on_a_host_fleet_verbs_say_where_to_run(capsys, host_cli):
    for argv in (["policy", "commit", "--atomic"], ["tag", "add", "--id", "a", "--role", "db"], ["discover"]):
        status, _out, err = run(capsys, *argv)
        assert status == BAD_INPUT and "is a fleet verb: run it on the control node with -i INVENTORY" in err
    assert not host_cli.exists()


def test_local_without_a_host_cli_says_so(capsys, monkeypatch):
    monkeypatch.setattr(cli, "HOST_CLI", "/nonexistent/mseg")
    status, _out, err = run(capsys, "--local", "status")
    assert status == BAD_INPUT and "/nonexistent/mseg is not here" in err


def test_bash_completion_offers_the_verbs_and_options_of_each_level(capsys, tmp_path):
    status, script, _err = run(capsys, "completion", "bash")
    assert status == OK
    (tmp_path / "c.sh").write_text(script)

    def complete(line):
        words = line.split(" ")
        probe = 'source %s; COMP_WORDS=(%s); COMP_CWORD=%d; _mseg_cli; echo "${COMPREPLY[@]}"' % (
            tmp_path / "c.sh", " ".join("'%s'" % w for w in words), len(words) - 1)
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("mseg-cli ") == ["--help", "--inventory", "--local", "--quiet", "completion", "discover", "mode",
                                     "policy", "status", "tag", "trace"]
    assert complete("mseg-cli -i inv mode set ") == ["--all-zones", "--help", "--limit", "--quiet", "--zone", "bypass", "clear",
                                                     "enforce", "observe"]
    assert complete("mseg-cli policy commit --a") == ["--atomic"]
    assert complete("mseg-cli tag a") == ["add"]
    assert os.path.getsize(tmp_path / "c.sh") > 0


def test_tag_add_takes_any_label_in_order_and_no_abbreviation(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "tag_add", lambda args, labels: seen.update(labels) or OK)
    assert cli.main(["-i", "inv", "tag", "add", "--id", "a", "--r", "x", "--env=prod", "--role", "db", "--zone",
                     "-dmz"]) == OK
    assert list(seen.items()) == [("role", "db"), ("r", "x"), ("env", "prod"), ("zone", "-dmz")]
