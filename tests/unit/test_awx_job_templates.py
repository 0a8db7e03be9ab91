"""The AWX job templates (playbooks/awx/vars/job_templates.yml) against what they run.

Each survey field is a documented variable of its playbook (README.md, Playbook variables, or docs/discovery.md for
discovery's own settings) or an option of a role the playbook runs (meta/argument_specs.yml), with the same default,
choices and required answer; each variable the playbook documents or reads is in the survey or in ``not_in_survey``
with the reason. The surveys are valid AWX survey specs, and mseg.fleet.awx.configure passes the awx.awx modules only
options they have.
"""

import ast
import os
import re

import ansible
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWX_DIR = os.path.join(ROOT, "playbooks", "awx")
# The playbooks that AWX users launch (issue 24): one job template each.
PLAYBOOKS = ["site", "rollout", "mode", "bypass", "trace", "observe_report", "publish", "discover"]
# AWX's survey question: its keys and types (awx/main/models/mixins.py, SurveyJobTemplateMixin).
QUESTION_KEYS = {"question_name", "question_description", "variable", "type", "required", "default", "choices",
                 "min", "max", "new_question"}
QUESTION_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
BOOLEAN_CHOICES = ["true", "false"]
# Which survey type carries each argument spec type.
SPEC_TYPES = {"int": "integer", "float": "float", "str": "text", "path": "text", "bool": "multiplechoice"}


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as handle:
        return handle.read()


def templates():
    return yaml.safe_load(read("playbooks", "awx", "vars", "job_templates.yml"))["mseg_awx_job_templates"]


def playbook_name(template):
    return os.path.splitext(os.path.basename(template["playbook"]))[0]


def table(text, header):
    """The rows of the Markdown table whose header row is ``header``, as dicts of column name -> cell."""
    lines = text.splitlines()
    start = lines.index(header)
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append(dict(zip(columns, cells)))
    return rows


def documented_rows(rows):
    """name -> {"required": bool, "default": the documented default as text, or None} of a variables table."""
    found = {}
    for row in rows:
        names = re.findall(r"`([^`]+)`", row["variable"])
        cell = row["default"]
        defaults = re.findall(r"`([^`]+)`", cell)
        for index, name in enumerate(names):
            if "required" in cell:
                found[name] = {"required": True, "default": None}
            elif len(defaults) == len(names):
                found[name] = {"required": False, "default": defaults[index]}
            else:
                found[name] = {"required": False, "default": defaults[0] if len(defaults) == 1 else None}
    return found


def readme_variables(playbook):
    """The variables README.md's Playbook variables table documents for ``playbook``."""
    rows = table(read("README.md"), "| variable | playbooks | default | meaning |")
    mine = [row for row in rows if playbook in [p.strip() for p in row["playbooks"].split(",")]]
    return documented_rows(mine)


def discovery_variables():
    return documented_rows(table(read("docs", "discovery.md"), "| variable | default | meaning |"))


def inventory_contract():
    rows = table(read("README.md"), "| variable | where | meaning |")
    return {name for row in rows for name in re.findall(r"`(mseg_[a-z0-9_]+)`", row["variable"])}


def read_by_playbook(text):
    """The mseg_ variables a playbook names (its header documents them too), not the keys it publishes (set_stats)."""
    published = set(re.findall(r"\b(mseg_[a-z0-9_]+):", text))
    return set(re.findall(r"\b(mseg_[a-z0-9_]+)\b", text)) - published


def covers(names, variable):
    return any(variable == n or (n.endswith("*") and variable.startswith(n[:-1])) for n in names)


def role_options(text):
    """name -> option spec of every entry point of every mseg.fleet role the playbook runs."""
    options = {}
    for role in sorted(set(re.findall(r"\bmseg\.fleet\.([a-z_]+)\b", text))):
        path = os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                for entry in yaml.safe_load(handle)["argument_specs"].values():
                    options.update(entry.get("options", {}))
    return options


def same_value(survey_default, documented):
    """A survey default (YAML-typed) equals a documented one (text or a literal from the playbook)."""
    if isinstance(documented, bool):
        documented = str(documented).lower()
    if isinstance(survey_default, (int, float)) and not isinstance(survey_default, bool):
        try:
            return float(documented) == float(survey_default)
        except (TypeError, ValueError):
            return False
    return str(survey_default) == str(documented)


def code_default(text, variable):
    """The literal in ``variable | default(LITERAL)`` in the playbook, or None."""
    match = re.search(r"\b%s \| default\(([^()]*)\)" % re.escape(variable), text)
    if not match:
        return None
    return ast.literal_eval(match.group(1).replace("true", "True").replace("false", "False"))


TEMPLATE_IDS = [t["name"] for t in templates()]


def test_one_template_per_playbook_users_launch():
    assert sorted(playbook_name(t) for t in templates()) == sorted(PLAYBOOKS)
    for template in templates():
        assert template["playbook"] == "playbooks/%s.yml" % playbook_name(template)
        assert os.path.exists(os.path.join(ROOT, template["playbook"]))


@pytest.mark.parametrize("template", templates(), ids=TEMPLATE_IDS)
def test_survey_and_documented_variables_agree(template):
    """Both directions: nothing documented or read is missing, nothing surveyed is undocumented."""
    name = playbook_name(template)
    text = read(template["playbook"])
    documented = set(readme_variables(name))
    read_names = read_by_playbook(text) - (inventory_contract() - documented)
    expected = documented | read_names
    surveyed = {q["variable"] for q in template["survey"]}
    declared = surveyed | set(template["not_in_survey"])
    options = role_options(text)

    missing = sorted(v for v in expected if not covers(declared, v))
    assert missing == [], "%s: documented or read by %s, neither in the survey nor in not_in_survey" % (missing, name)
    extra = sorted(v for v in declared - expected if v.startswith("mseg_")
                   and not (name == "discover" and v in discovery_variables()))
    assert extra == [], "%s: in the %s template but not documented for %s" % (extra, template["name"], name)
    roles = sorted(v for v in declared if not v.startswith("mseg_") and v not in options)
    assert roles == [], "%s: not an option of a role that %s runs" % (roles, name)
    assert not surveyed & set(template["not_in_survey"])


@pytest.mark.parametrize("template", templates(), ids=TEMPLATE_IDS)
def test_survey_fields_match_docs_code_and_argument_specs(template):
    name = playbook_name(template)
    text = read(template["playbook"])
    docs = dict(discovery_variables(), **readme_variables(name)) if name == "discover" else readme_variables(name)
    options = role_options(text)
    for question in template["survey"]:
        variable = question["variable"]
        where = "%s, %s" % (template["name"], variable)
        default = question.get("default")
        if variable in options:
            spec = options[variable]
            assert question["type"] == SPEC_TYPES[spec.get("type", "str")], where
            assert question["required"] == spec.get("required", False), where
            assert same_value(default, spec.get("default")), where
            if "choices" in spec or spec.get("type") == "bool":
                assert question["choices"] == [str(c).lower() for c in spec.get("choices", [True, False])], where
            continue
        doc = docs.get(variable)
        assert doc is not None, "%s: not a documented variable of %s" % (where, name)
        assert question["required"] == doc["required"], where
        if doc["default"] is None:
            assert default is None, "%s: the docs give no default, the survey %r" % (where, default)
        else:
            assert same_value(default, doc["default"]), "%s: docs %r, survey %r" % (where, doc["default"], default)
        literal = code_default(text, variable)
        if literal == "":
            # the playbook reads a blank answer as no answer
            assert default is None, "%s: blank in the playbook means unset, the survey gives %r" % (where, default)
        elif literal is not None:
            assert same_value(default, literal), "%s: playbook %r, survey %r" % (where, literal, default)
        if question["required"]:
            # the playbook checks it first, so a launch without the survey fails before any host is touched too
            assert re.search(r"\b%s (is defined|in \[)" % variable, text), where
        if question["type"] == "multiplechoice" and question["choices"] != BOOLEAN_CHOICES:
            match = re.search(r"\b%s in (\[[^\]]*\])" % variable, text)
            assert match and ast.literal_eval(match.group(1)) == question["choices"], where
        elif question["type"] == "multiplechoice":
            assert str(default) in BOOLEAN_CHOICES and re.search(r"\b%s \| default\((true|false)\)" % variable, text)


@pytest.mark.parametrize("template", templates(), ids=TEMPLATE_IDS)
def test_surveys_are_valid_awx_survey_specs(template):
    variables = [q["variable"] for q in template["survey"]]
    assert len(variables) == len(set(variables))
    for question in template["survey"]:
        where = "%s, %s" % (template["name"], question["variable"])
        assert set(question) <= QUESTION_KEYS and question["question_name"], where
        assert question["type"] in QUESTION_TYPES and isinstance(question["required"], bool), where
        default = question.get("default")
        if question["type"] == "multiplechoice":
            assert default is None or default in question["choices"], where
        if question["type"] in ("integer", "float") and default is not None:
            assert question["min"] <= default <= question["max"], where
        if question["type"] == "integer":
            assert default is None or isinstance(default, int), where
        assert not (question["required"] and default is not None), "%s: a required answer has no default" % where


def module_options(module):
    path = os.path.join(os.path.dirname(ansible.__file__), "..", "ansible_collections", "awx", "awx", "plugins",
                        "modules", module + ".py")
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
            return set(yaml.safe_load(node.value.value)["options"])
    raise AssertionError("no DOCUMENTATION in " + path)


def test_configure_passes_the_awx_modules_only_their_options():
    plays = yaml.safe_load(read("playbooks", "awx", "configure.yml"))
    used = set()
    for task in plays[0]["tasks"]:
        module = next(k for k in task if "." in k)
        if module.startswith("awx.awx."):
            short = module.split(".")[-1]
            used.add(short)
            assert set(task[module]) <= module_options(short), module
    assert used == {"execution_environment", "project", "job_template"}
    assert plays[0]["vars_files"] == ["vars/job_templates.yml"]
