"""The AWX job templates run the way AWX runs them: ansible-runner from a private data directory (awx_job.py), the
survey answered, the inventory synced, the set_stats data in the job's artifacts.

trace, render and observe_report need no managed host (observe_report reads the drop logs of two hosts that are this
machine, read-only); mode and bypass run on a host in a network namespace as tests/integration/test_bypass_playbooks.py
does, through the `ansible-runner run` command line. site, rollout, publish and discover are not run here: their
surveys are checked against their playbooks by tests/unit/test_awx_job_templates.py, and the playbooks themselves run
on the lab in molecule/.
"""

import json
import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import awx_job  # noqa: E402
from netns import CONNECTED, Fleet, available  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "inventories", "example")
# the example policy (inventories/example/group_vars/all): nothing lets web reach db, and stage may not reach prod
TRACE = {"mseg_trace_src": "role=web", "mseg_trace_dst": "db-p1", "mseg_trace_port": "tcp/5432"}


def ran_tasks(artifact_dir):
    return [e["event_data"]["task"] for e in awx_job.events(artifact_dir, "playbook_on_task_start")]


@pytest.fixture(autouse=True)
def fixture_cwd(tmp_path, monkeypatch):
    """A job's own files (the playbooks' default report directories) land beside the test, never in the checkout."""
    monkeypatch.chdir(tmp_path)


def test_trace_job_answers_from_its_survey(tmp_path):
    runner = awx_job.launch(awx_job.template("mseg.fleet trace"), TRACE, EXAMPLE, tmp_path)
    artifact_dir = runner.config.artifact_dir
    assert (runner.status, runner.rc, awx_job.status(artifact_dir)) == ("successful", 0, "successful")
    with open(os.path.join(tmp_path, "private", "env", "extravars"), encoding="utf-8") as handle:
        extra_vars = yaml.safe_load(handle)
    # the survey's defaults fill in what the launch left out; AWX surveys carry booleans as the strings
    assert extra_vars == dict(TRACE, mseg_trace_hosts="all", mseg_trace_live="false", mseg_become="true",
                              awx_job_template_name="mseg.fleet trace", awx_job_id=1)
    shown = [e for e in awx_job.events(artifact_dir, "runner_on_ok") if e["event_data"]["task"] == "Show the verdicts"]
    lines = shown[0]["event_data"]["res"]["msg"]
    assert any(line.split()[:4] == ["DENY", "web-p1", "->", "db-p1"] and "by default" in line for line in lines)
    assert any(line.startswith("DENY   web-s1") and "by rule 1200 (no-stage-to-prod)" in line for line in lines)
    # mseg_trace_live "false" is read as false: no counter is read, no flow sent
    skipped = {e["event_data"]["task"] for e in awx_job.events(artifact_dir, "runner_on_skipped")}
    assert {"Read the counters before", "Send the traced flow"} <= skipped
    assert awx_job.events(artifact_dir, "runner_on_unreachable") == []


def test_render_job_writes_every_host(tmp_path):
    out = tmp_path / "render"
    runner = awx_job.run_job("playbooks/render.yml", {"mseg_render_dir": str(out)}, EXAMPLE, tmp_path)
    assert (runner.status, runner.rc) == ("successful", 0)
    assert len(list(out.glob("*.nft"))) == 12 and (out / "plan.json").exists()
    assert "table inet mseg" in (out / "db-p1.nft").read_text()


def local_inventory(path, hosts, mode="observe", policy=None, **host_vars):
    data = {"all": {
        "hosts": {name: dict({"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                              "mseg_addresses": [address], "mseg_tags": {"role": name}, "mseg_mode": mode}, **host_vars)
                  for name, address in hosts.items()},
        "vars": {"policy_droplog": False, "mseg_policy": policy or {
            "defaults": {"ingress": "deny", "egress": "allow"},
            "rules": [{"id": 10, "name": "web-to-db", "from": {"tags": {"role": "web"}}, "to": {"tags": {"role": "db"}},
                       "ports": ["tcp/5432"]}]}}}}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_observe_report_job_publishes_its_summary_as_an_artifact(tmp_path):
    inventory = local_inventory(tmp_path / "hosts.yml", {"web": "10.1.0.1", "db": "10.1.0.2"})
    report = tmp_path / "report"
    runner = awx_job.launch(awx_job.template("mseg.fleet observe_report"),
                            {"mseg_become": "false", "mseg_observe_report_dir": str(report)}, inventory, tmp_path)
    assert (runner.status, runner.rc) == ("successful", 0)
    published = awx_job.artifacts(runner.config.artifact_dir)
    assert list(published) == ["mseg_observe_report"]
    assert published["mseg_observe_report"] == json.loads((report / "observe-report.json").read_text())
    assert {"packets", "flows", "rules", "pairs", "collecting"} <= set(published["mseg_observe_report"])


@pytest.mark.parametrize("name, answers, problems", [
    ("mseg.fleet mode", {"mseg_hosts": "web"},
     ["the survey question 'Mode' (mseg_mode) needs an answer: observe, enforce, bypass"]),
    ("mseg.fleet mode", {"mseg_mode": "off", "policy_confirm_timeout": -1},
     ["the survey question 'Commit-confirmed timeout' (policy_confirm_timeout) takes 0 to 3600, not -1",
      "the survey question 'Mode' (mseg_mode) takes one of observe, enforce, bypass, not 'off'"]),
    ("mseg.fleet trace", {"mseg_trace_src": "web-p1", "mseg_trace_dst": "db-p1"},
     ["the survey question 'Port' (mseg_trace_port) needs an answer"]),
    ("mseg.fleet bypass", {"mseg_policy": {}},
     ["mseg_policy is not a question of the survey, and the template takes no other variables"]),
])
def test_a_launch_with_a_bad_answer_is_refused_before_anything_runs(tmp_path, name, answers, problems):
    with pytest.raises(awx_job.LaunchRefused) as refused:
        awx_job.launch(awx_job.template(name), answers, EXAMPLE, tmp_path)
    assert refused.value.problems == problems
    assert str(refused.value).startswith(name + ": ")
    assert list(tmp_path.iterdir()) == []


def unreachable_inventory(path, mode):
    """A host that refuses every connection at once, whose inventory gives it a mode, as inventories do."""
    data = {"all": {"hosts": {"h": {"ansible_host": "127.0.0.1", "ansible_port": 1, "mseg_addresses": ["10.1.0.1"]}},
                    "vars": {"mseg_mode": mode, "mseg_policy": {"rules": []}}}}
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("playbook, message", [
    ("playbooks/trace.yml", "Give the flow to trace: -e mseg_trace_src=SRC"),
    ("playbooks/render.yml", "Set the output directory: -e mseg_render_dir=DIR"),
    # the inventory gives the host a mode: the playbook still wants one from the launch
    ("playbooks/mode.yml", "Give the mode to set: -e mseg_mode=observe|enforce|bypass"),
])
def test_without_the_answer_the_playbook_stops_at_its_first_task(tmp_path, playbook, message):
    """A job launched without the answer (the survey off, or ansible-playbook without -e) fails at the playbook's
    own first check, before any host is contacted."""
    runner = awx_job.run_job(playbook, {}, unreachable_inventory(tmp_path / "hosts.yml", "observe"), tmp_path)
    artifact_dir = runner.config.artifact_dir
    assert runner.status == "failed"
    assert awx_job.events(artifact_dir, "runner_on_unreachable") == []
    assert len(ran_tasks(artifact_dir)) == 1
    failed = awx_job.events(artifact_dir, "runner_on_failed")
    assert len(failed) == 1 and failed[0]["event_data"]["res"]["msg"].startswith(message)


# Mount an overlay on /etc (writes land in $1/upper), then run the rest of the arguments (as test_bypass_playbooks).
SANDBOX = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc && shift && exec "$@"'


@pytest.mark.skipif(not available()[0], reason=available()[1])
def test_mode_and_bypass_jobs_on_a_host(tmp_path):
    """`ansible-runner run`, the command AWX's worker runs, inside host "h"'s namespace; "p" sends the traffic."""
    with Fleet(["h", "p"], ipv6=False) as fleet:
        policy = {"defaults": {"ingress": "deny", "egress": "allow"},
                  "rules": [{"id": 10, "name": "peer-to-h", "from": {"cidr": [fleet.addr("p")]},
                             "to": {"hosts": ["h"]}, "ports": ["tcp/8080"]}]}
        inventory = local_inventory(tmp_path / "hosts.yml", {"h": fleet.addr("h")}, policy=policy)

        def job(name, answers):
            work = tmp_path / ("job%d" % len(list(tmp_path.glob("job*"))))
            for sub in ("upper", "work"):
                (work / sub).mkdir(parents=True)
            job_template = awx_job.template(name)
            extra_vars = awx_job.survey_extra_vars(job_template, answers)
            private = awx_job.private_data_dir(extra_vars, inventory, work)
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", str(work),
                    os.path.join(awx_job.VENV_BIN, "ansible-runner"), "run", private, "-p", job_template["playbook"],
                    "--ident", "job"]
            fleet.run("h", argv, check=False, timeout=300)
            return os.path.join(private, "artifacts", "job")

        def table():
            proc = fleet.run("h", ["nft", "list", "table", "inet", "mseg"], check=False)
            return proc.stdout if proc.returncode == 0 else ""

        # the zone question answered blank: every targeted host
        done = job("mseg.fleet mode", {"mseg_mode": "enforce", "mseg_zone": "", "mseg_become": "false"})
        assert awx_job.status(done) == "successful", open(os.path.join(done, "stdout")).read()[-3000:]
        assert 'counter name "rule_10_in" accept' in table()
        assert fleet.probe("p", "h", 8080) == CONNECTED and fleet.probe("p", "h", 5432) != CONNECTED

        done = job("mseg.fleet bypass", {"mseg_become": "false"})
        assert awx_job.status(done) == "successful", open(os.path.join(done, "stdout")).read()[-3000:]
        assert "counter emergency_bypass" in table() and fleet.probe("p", "h", 5432) == CONNECTED

        # no answer to the mode question: refused at launch, the host keeps its bypass
        with pytest.raises(awx_job.LaunchRefused):
            job("mseg.fleet mode", {"mseg_become": "false"})
        assert "counter emergency_bypass" in table()

        done = job("mseg.fleet mode", {"mseg_mode": "observe", "mseg_become": "false"})
        assert awx_job.status(done) == "successful", open(os.path.join(done, "stdout")).read()[-3000:]
        assert "bypass" not in table() and fleet.probe("p", "h", 5432) == CONNECTED
