"""How a finished ansible-runner job becomes mseg-cli's exit status and message, and the progress lines."""

import io

import pytest

from mseg_cli import runner
from mseg_cli.errors import BAD_INPUT, FAILED, INTERRUPTED, OK, CliError


class FakeRunner:
    def __init__(self, status, events, stdout=""):
        self.status = status
        self.rc = 0 if status == "successful" else 2
        self.events = events
        self.stdout = io.StringIO(stdout)


def event(kind, task, action, host="h1", **res):
    return {"event": kind, "event_data": {"task": task, "task_action": action, "host": host, "res": res}}


COMPILE = ("Compile the fleet policy", "mseg.fleet.compile")
APPLY = ("Apply the ruleset", "mseg.fleet.nft_apply")


def status_of(status, events, stdout="", interrupted=False):
    run = runner.Run(FakeRunner(status, events, stdout), interrupted)
    try:
        return run.status(), ""
    except CliError as exc:
        return exc.status, str(exc)


def test_a_successful_run_is_0():
    assert status_of("successful", [event("runner_on_ok", *APPLY, changed=True)]) == (OK, "")


def test_a_failed_compile_is_bad_input_and_says_nothing_changed():
    status, message = status_of("failed", [event("runner_on_failed", *COMPILE, msg="rule 10: ports[0]: bad")])
    assert status == BAD_INPUT
    assert message == "h1: Compile the fleet policy: rule 10: ports[0]: bad\n(nothing was changed)"


@pytest.mark.parametrize("events", [
    [event("runner_on_failed", *APPLY, msg="nft said no")],
    [event("runner_on_unreachable", *APPLY, msg="ssh: timeout")],
    [event("runner_on_failed", *COMPILE, host="h1", msg="x"), event("runner_on_unreachable", *APPLY, host="h2")],
])
def test_a_failure_on_hosts_is_1_and_names_host_and_task(events):
    status, message = status_of("failed", events)
    assert status == FAILED and "h1: " in message and "the other hosts finished or were not started" in message


def test_ignored_failures_do_not_count():
    ignored = event("runner_on_failed", *APPLY)
    ignored["event_data"]["ignore_errors"] = True
    assert status_of("successful", [ignored]) == (OK, "")


def test_a_run_that_failed_before_any_task_shows_ansibles_error():
    status, message = status_of("failed", [], stdout="ERROR! the playbook: mseg.fleet.mode could not be found\n")
    assert status == BAD_INPUT and "ERROR! the playbook: mseg.fleet.mode could not be found" in message


@pytest.mark.parametrize("status, interrupted", [("canceled", False), ("failed", True)])
def test_an_interrupted_run_is_130(status, interrupted):
    code, message = status_of(status, [], interrupted=interrupted)
    assert code == INTERRUPTED and "the inventory is as it was" in message


def test_progress_lines(capsys):
    progress = runner.Progress(quiet=False)
    progress({"event": "playbook_on_play_start", "event_data": {"play": "Set the enforcement mode"}})
    progress({"event": "playbook_on_task_start", "event_data": {"task": "Apply"}})
    progress(event("runner_on_ok", *APPLY, changed=True))
    progress(event("runner_on_failed", *APPLY, host="h2"))
    progress(event("runner_on_unreachable", *APPLY, host="h3"))
    assert capsys.readouterr().err.splitlines() == [
        "== Set the enforcement mode", "-- Apply", "   changed          h1", "   FAILED           h2",
        "   UNREACHABLE      h3"]
    runner.Progress(quiet=True)(event("runner_on_ok", *APPLY))
    assert capsys.readouterr().err == ""


def test_plain_names_of_a_pattern_must_exist():
    runner.check_pattern("web:db-1,!db-2:web*", {"db-1", "db-2"}, {"web"}, "--limit")
    with pytest.raises(CliError, match="--limit: db-3 is neither a host nor a group"):
        runner.check_pattern("web:db-3", {"db-1"}, {"web"}, "--limit")
