"""tag add's host_vars edit: comments, order and every other line kept; whatever it cannot edit safely refused."""

import os

import pytest
import yaml

from mseg_cli import tags
from mseg_cli.errors import BAD_INPUT, CliError

DB = """---
# the primary database
mseg_addresses: [10.10.3.31]  # v4 only
mseg_tags:
  # the tier
  role: db   # was db
  owner: team-a

mseg_mode: enforce
"""


def test_an_existing_label_changes_in_place_and_a_new_one_follows_the_last():
    text = tags.edit(DB, {"role": "database", "env": "prod"}, "db.yml")
    assert text == DB.replace("role: db   # was db", "role: database   # was db").replace(
        "owner: team-a\n", "owner: team-a\n  env: prod\n")
    assert yaml.safe_load(text)["mseg_tags"] == {"role": "database", "owner": "team-a", "env": "prod"}


def test_a_file_without_mseg_tags_gets_them_at_its_end_and_a_new_file_is_made():
    assert tags.edit("---\n# mine\nmseg_mode: observe", {"role": "web"}, "w.yml") == \
        "---\n# mine\nmseg_mode: observe\nmseg_tags:\n  role: web\n"
    assert tags.edit(None, {"role": "web", "env": "prod"}, "w.yml") == "---\nmseg_tags:\n  role: web\n  env: prod\n"


@pytest.mark.parametrize("value, written", [
    ("web", "web"), ("yes", '"yes"'), ("5432", '"5432"'), ("null", '"null"'), ("a b", '"a b"'),
    ("grid-ops", "grid-ops"), ("x: y", '"x: y"'), ("#1", '"#1"'),
])
def test_values_read_back_as_the_same_string(value, written):
    assert tags.scalar(value) == written
    text = tags.edit(None, {"role": value}, "w.yml")
    assert yaml.safe_load(text)["mseg_tags"]["role"] == value


@pytest.mark.parametrize("text, why", [
    ("mseg_tags: {role: web}\n", "flow style"),
    ("mseg_tags:\n  role: [web, db]\n", "not a single value"),
    ("mseg_tags: [web]\n", "not a mapping of label to value"),
    ("- a\n- b\n", "does not hold a mapping"),
    ("mseg_tags:\n  role: web\n   env: prod\n", "cannot read"),
    ("mseg_tags:\n  role: &r web\nx: *r\n", "not a single value"),
    ('"mseg_tags":\n  role: web\n', "not written as one"),
])
def test_what_cannot_be_edited_safely_is_refused(text, why):
    with pytest.raises(CliError) as raised:
        tags.edit(text, {"role": "database"}, "h.yml")
    assert why in str(raised.value) and "nothing was changed" in str(raised.value)
    assert raised.value.status == BAD_INPUT


def test_the_host_vars_file_is_found_where_ansible_reads_it(tmp_path):
    (tmp_path / "hosts.yml").write_text("all: {hosts: {a: {}, b: {}, c: {}}}\n")
    (tmp_path / "host_vars" / "b").mkdir(parents=True)
    (tmp_path / "host_vars" / "b" / "net.yml").write_text("x: 1\n")
    (tmp_path / "host_vars" / "b" / "labels.yaml").write_text("mseg_tags:\n  role: web\n")
    (tmp_path / "host_vars" / "c.yaml").write_text("x: 1\n")
    found = {h: tags.host_vars_file(str(where), h) for h in "abc" for where in (tmp_path, tmp_path / "hosts.yml")}
    assert found == {"a": str(tmp_path / "host_vars" / "a.yml"), "b": str(tmp_path / "host_vars" / "b" / "labels.yaml"),
                     "c": str(tmp_path / "host_vars" / "c.yaml")}


def test_replace_is_atomic_keeps_the_mode_and_refuses_a_file_changed_meanwhile(tmp_path):
    path = tmp_path / "host_vars" / "a.yml"
    path.parent.mkdir()
    path.write_text("old\n")
    os.chmod(path, 0o640)
    tags.replace(str(path), "new\n", "old\n")
    assert path.read_text() == "new\n" and (os.stat(path).st_mode & 0o777) == 0o640
    with pytest.raises(CliError, match="changed while the edit was checked"):
        tags.replace(str(path), "newer\n", "old\n")
    assert path.read_text() == "new\n" and os.listdir(path.parent) == ["a.yml"]
    tags.replace(str(tmp_path / "host_vars" / "b.yml"), "b\n", None)
    assert (tmp_path / "host_vars" / "b.yml").read_text() == "b\n"


def test_an_edit_that_would_not_read_back_as_intended_is_refused(monkeypatch):
    """The last guard: whatever the line edit got wrong (here a value written unquoted), the file is not written."""
    monkeypatch.setattr(tags, "scalar", lambda value: value)
    with pytest.raises(CliError, match="would not read back as the same variables plus the new labels"):
        tags.edit(DB, {"enabled": "yes"}, "db.yml")
