"""A job template launched the way AWX / Automation Controller launches it, with ansible-runner (the engine AWX runs
every job with) standing in for AWX, which cannot run on these machines.

``launch(template, answers, inventory, workdir)`` first does what AWX does with a launch request: the answers are
checked against the template's survey (playbooks/awx/vars/job_templates.yml) and a launch with a missing required
answer, a choice the survey does not offer, a number out of bounds or a variable the template does not accept is
refused (``LaunchRefused``, one message per problem) before anything runs. Then, as AWX does for a job:

- the survey's defaults fill in the questions left unanswered, and the extra variables go to ``env/extravars``;
- the project (the collection's playbooks) is copied into ``project/``, and the playbook runs from there;
- the inventory is synced (``ansible-inventory --list --export``) and written as ``inventory/hosts``, a script that
  prints it, as AWX writes a job's inventory;
- the collection comes from the collection path (``env/envvars``), as an execution environment provides it;
- ansible-runner writes the job's status, return code, events and ``set_stats`` data (the job's artifacts, in the
  ``playbook_on_stats`` event) under ``artifacts/<ident>/``.

``run_job`` is the second half alone: a job with the extra variables as given, as if the survey were off.
``private_data_dir`` makes the directory for ``ansible-runner run DIR -p PLAYBOOK`` (the command line of AWX's
worker); ``events``, ``artifacts`` and ``status`` read a job's results from its artifact directory.
"""

import json
import os
import shutil
import subprocess
import sys

import ansible_runner
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
TEMPLATES = os.path.join(ROOT, "playbooks", "awx", "vars", "job_templates.yml")
# How AWX writes a job's inventory into the private data directory: a script that prints the synced inventory.
INVENTORY_SCRIPT = "#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint(%r)\n"


class LaunchRefused(Exception):
    """AWX's answer to a launch it refuses: nothing ran."""

    def __init__(self, template, problems):
        super().__init__("%s: %s" % (template["name"], "; ".join(problems)))
        self.problems = problems


def template(name):
    with open(TEMPLATES, encoding="utf-8") as handle:
        for found in yaml.safe_load(handle)["mseg_awx_job_templates"]:
            if found["name"] == name:
                return found
    raise KeyError(name)


def _problem(question, value):
    """Why AWX would refuse ``value`` as the answer to ``question``, or None."""
    where = "the survey question %r (%s)" % (question["question_name"], question["variable"])
    kind = question["type"]
    if kind == "multiplechoice":
        if value not in question["choices"]:
            return "%s takes one of %s, not %r" % (where, ", ".join(question["choices"]), value)
    elif kind in ("integer", "float"):
        number_types = (int,) if kind == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            return "%s takes a%s %s, not %r" % (where, "n" if kind == "integer" else "", kind, value)
        if not question.get("min", value) <= value <= question.get("max", value):
            return "%s takes %s to %s, not %r" % (where, question["min"], question["max"], value)
    elif not isinstance(value, str):
        return "%s takes text, not %r" % (where, value)
    return None


def survey_extra_vars(job_template, answers):
    """The job's extra variables from the launch's answers, or LaunchRefused."""
    questions = {q["variable"]: q for q in job_template["survey"]}
    problems, extra_vars = [], {}
    for variable, question in questions.items():
        if variable in answers:
            problem = _problem(question, answers[variable])
            if problem:
                problems.append(problem)
            extra_vars[variable] = answers[variable]
        elif question["required"]:
            choices = question.get("choices")
            problems.append("the survey question %r (%s) needs an answer%s" % (
                question["question_name"], variable, ": " + ", ".join(choices) if choices else ""))
        elif question.get("default") is not None:
            extra_vars[variable] = question["default"]
    for variable in sorted(set(answers) - set(questions)):
        if not job_template["not_in_survey"]:
            problems.append("%s is not a question of the survey, and the template takes no other variables" % variable)
        extra_vars[variable] = answers[variable]
    if problems:
        raise LaunchRefused(job_template, problems)
    return extra_vars


def _sync_inventory(source, path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"))
    listed = subprocess.run([os.path.join(VENV_BIN, "ansible-inventory"), "-i", source, "--list", "--export"],
                            capture_output=True, text=True, check=True, env=env, timeout=120).stdout
    os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(INVENTORY_SCRIPT % json.dumps(json.loads(listed)))
    os.chmod(path, 0o700)


def private_data_dir(extra_vars, inventory, workdir):
    """The private data directory of a job, made in ``workdir`` as AWX makes it; its path."""
    private = os.path.join(str(workdir), "private")
    shutil.copytree(os.path.join(ROOT, "playbooks"), os.path.join(private, "project", "playbooks"))
    _sync_inventory(inventory, os.path.join(private, "inventory", "hosts"))
    os.makedirs(os.path.join(private, "env"))
    with open(os.path.join(private, "env", "extravars"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(extra_vars, handle)
    envvars = {"ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".build", "collections"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
               "ANSIBLE_LOCAL_TEMP": os.path.join(str(workdir), "ansible-local"),
               "ANSIBLE_REMOTE_TEMP": os.path.join(str(workdir), "ansible-remote")}
    with open(os.path.join(private, "env", "envvars"), "w", encoding="utf-8") as handle:
        json.dump(envvars, handle)
    return private


def run_job(playbook, extra_vars, inventory, workdir, ident="job"):
    """Run ``playbook`` (a path in the project) with ansible-runner from a private data directory made in ``workdir``;
    return the runner (``status``, ``rc``, ``events``, ``config.artifact_dir``)."""
    private = private_data_dir(extra_vars, inventory, workdir)
    return ansible_runner.run(private_data_dir=private, playbook=playbook, ident=ident, quiet=True)


def launch(job_template, answers, inventory, workdir, ident="job"):
    """Launch ``job_template`` with the survey ``answers`` as AWX does (LaunchRefused before anything runs)."""
    extra_vars = survey_extra_vars(job_template, answers)
    extra_vars.update(awx_job_template_name=job_template["name"], awx_job_id=1)
    return run_job(job_template["playbook"], extra_vars, inventory, workdir, ident)


def events(artifact_dir, kind=None):
    """The job's events in order (``artifacts/<ident>/job_events/``), or those of one kind (runner_on_ok,
    runner_on_failed, playbook_on_stats...)."""
    found = []
    directory = os.path.join(str(artifact_dir), "job_events")
    for name in os.listdir(directory):
        if name.endswith(".json"):
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                found.append(json.load(handle))
    found.sort(key=lambda event: event["counter"])
    return [e for e in found if kind is None or e["event"] == kind]


def artifacts(artifact_dir):
    """The job's artifacts: what the playbook published with set_stats."""
    return events(artifact_dir, "playbook_on_stats")[-1]["event_data"].get("artifact_data", {})


def status(artifact_dir):
    with open(os.path.join(str(artifact_dir), "status"), encoding="utf-8") as handle:
        return handle.read().strip()
