"""The render and trace playbooks, run for real with ansible-playbook on the example inventory."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from netns import Fleet, available  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "inventories", "example")
ENV = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"), ANSIBLE_NOCOLOR="1",
           ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
           ANSIBLE_CALLBACK_RESULT_FORMAT="json")
HOSTS = 12
# the ansible-playbook of the virtualenv running the tests
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or "ansible-playbook"


def playbook(*args):
    proc = subprocess.run([ANSIBLE_PLAYBOOK] + list(args), capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def snapshot(directory):
    files = {}
    for path in sorted(glob.glob(os.path.join(directory, "*"))):
        with open(path, "rb") as handle:
            files[os.path.basename(path)] = handle.read()
    return files


def test_render_twice_is_byte_identical_and_unchanged(tmp_path):
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    rc, out = playbook("mseg.fleet.render", "-i", EXAMPLE, "-e", "mseg_render_dir=" + first)
    assert rc == 0, out
    assert "Rendered %d host(s)" % HOSTS in out
    rc, out = playbook("mseg.fleet.render", "-i", EXAMPLE, "-e", "mseg_render_dir=" + second)
    assert rc == 0, out
    assert snapshot(first) == snapshot(second)
    assert len(snapshot(first)) == HOSTS + 1  # one file per host and plan.json
    rc, out = playbook("mseg.fleet.render", "-i", EXAMPLE, "-e", "mseg_render_dir=" + first)
    assert rc == 0 and "changed=0" in out, out
    assert oct(os.stat(os.path.join(first, "web-p1.nft")).st_mode & 0o777) == "0o600"


@pytest.mark.skipif(not available()[0], reason=available()[1])
def test_every_rendered_file_loads_on_an_empty_ruleset(tmp_path):
    rc, out = playbook("mseg.fleet.render", "-i", EXAMPLE, "-e", "mseg_render_dir=%s" % tmp_path)
    assert rc == 0, out
    with Fleet(["load"], ipv6=False) as fleet:
        for name, body in snapshot(str(tmp_path)).items():
            if name.endswith(".nft"):
                fleet.run("load", ["nft", "-f", "-"], input=body.decode())
                listing = fleet.run("load", ["nft", "list", "tables"]).stdout
                assert listing.split() == ["table", "inet", "mseg"], (name, listing)


def test_render_limited_to_a_group(tmp_path):
    rc, out = playbook("mseg.fleet.render", "-i", EXAMPLE, "-e", "mseg_render_dir=%s" % tmp_path,
                       "-e", "mseg_render_hosts=db")
    assert rc == 0, out
    assert sorted(snapshot(str(tmp_path))) == ["db-p1.nft", "db-s1.nft", "plan.json"]


def test_broken_inventory_fails_with_every_problem_and_renders_nothing(tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, str(inventory))
    with open(str(inventory / "group_vars" / "stage" / "main.yml"), "a", encoding="utf-8") as handle:
        handle.write("mseg_mode: enforcing\n")
    with open(str(inventory / "group_vars" / "all" / "policy.yml"), "a", encoding="utf-8") as handle:
        handle.write("    - {id: 100, from: {any: true}, to: {cidr: [10.1.2.3/8]}}\n")
    out_dir = tmp_path / "out"
    rc, out = playbook("mseg.fleet.render", "-i", str(inventory), "-e", "mseg_render_dir=%s" % out_dir)
    assert rc != 0
    assert "Traceback" not in out
    assert "rule 100: id: used by rules[0] and rules[11]; rule ids must be unique" in out
    assert "rule 100: to.cidr[0]: '10.1.2.3/8' has host bits set; write 10.0.0.0/8, or 10.1.2.3/32 for the single " \
           "address" in out
    for host in ("app-s1", "db-s1", "web-s1"):
        assert "host %s: mseg_mode: 'enforcing' is not one of observe, enforce, bypass" % host in out
    assert not out_dir.exists()


def test_trace_names_the_deciding_rule():
    rc, out = playbook("mseg.fleet.trace", "-i", EXAMPLE, "-e", "mseg_trace_src=role=web,env=stage",
                       "-e", "mseg_trace_dst=db-p1", "-e", "mseg_trace_port=tcp/5432")
    assert rc == 0, out
    assert "DENY   web-s1         -> db-p1          tcp/5432   ipv4  egress of web-s1         by rule 1200 " \
           "(no-stage-to-prod)" in out


def test_trace_without_arguments_says_how_to_call_it():
    rc, out = playbook("mseg.fleet.trace", "-i", EXAMPLE)
    assert rc != 0
    assert "Give the flow to trace: -e mseg_trace_src=SRC -e mseg_trace_dst=DST -e mseg_trace_port=tcp/5432" in out
