"""mseg-cli as the documented install gives it (pip install of cli/, here into a directory of its own), running real
verbs: trace and tag add on a copy of the example inventory (no host contacted), an interrupted tag add, and mode
set, status and policy commit against a host in a network namespace (real nftables, real packets), the way
test_bypass_playbooks.py runs the playbooks.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from netns import CONNECTED, Fleet, available

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
EXAMPLE = os.path.join(ROOT, "inventories", "example")
# Mount an overlay on /etc (writes land in $1/upper), then run the rest of the arguments (test_bypass_playbooks.py).
SANDBOX = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc && shift && exec "$@"'
DB_VARS = """---
# the primary database
mseg_addresses: [10.10.3.31]  # v4 only
mseg_tags:
  # the tier
  role: db   # was db
"""


@pytest.fixture(name="cli", scope="module")
def fixture_cli(tmp_path_factory):
    """``pip install`` of a copy of cli/ (the checkout stays clean) into a target directory: its mseg-cli script and
    the environment it runs with (ansible-runner and Ansible from this virtualenv, the collection from the checkout's
    collection path)."""
    work = tmp_path_factory.mktemp("cli-install")
    shutil.copytree(os.path.join(ROOT, "cli"), str(work / "src"), ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(work / "site"),
                    str(work / "src")], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "ANSIBLE_", "MSEG_"))}
    env.update(PYTHONPATH=str(work / "site"), ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               PATH=VENV_BIN + os.pathsep + os.environ["PATH"], MSEG_HOST_CLI="/nonexistent/mseg",
               ANSIBLE_LOCAL_TEMP=str(work / "ansible-local"), ANSIBLE_REMOTE_TEMP=str(work / "ansible-remote"))
    return [str(work / "site" / "bin" / "mseg-cli")], env


def mseg_cli(cli, *argv, cwd=None):
    command, env = cli
    proc = subprocess.run(command + list(argv), capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
                          check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(name="inventory")
def fixture_inventory(tmp_path):
    """A copy of the example inventory, db-p1 with a host_vars file of its own."""
    copy = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, str(copy))
    (copy / "host_vars").mkdir()
    (copy / "host_vars" / "db-p1.yml").write_text(DB_VARS)
    return copy


def snapshot(directory):
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def test_trace_takes_groups_and_label_expressions_and_says_denied_in_its_status(cli, tmp_path):
    status, out, _err = mseg_cli(cli, "-i", EXAMPLE, "trace", "--src", "prod_web", "--dst", "role=app,env=prod",
                                 "--port", "tcp/8080", cwd=str(tmp_path))
    assert status == 0, out
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.startswith("ALLOW") and "by rule 1024 (web-to-app-prod)" in line
                                   for line in lines), out

    status, out, _err = mseg_cli(cli, "-i", EXAMPLE, "trace", "--src", "web-s1", "--dst", "db-p1", "--port", "tcp/5432",
                                 cwd=str(tmp_path))
    assert status == 3 and "by rule 1200 (no-stage-to-prod)" in out, out

    status, out, err = mseg_cli(cli, "-i", EXAMPLE, "trace", "--src", "role=nope", "--dst", "db", "--port", "tcp/5432",
                                cwd=str(tmp_path))
    assert status == 2 and out == "" and "mseg_trace_src: no host carries the tags role=nope" in err, err
    assert "Traceback" not in err


def test_tag_add_keeps_comments_and_order_and_the_policy_sees_the_new_label(cli, inventory, tmp_path):
    status, out, err = mseg_cli(cli, "-i", str(inventory / "hosts.yml"), "tag", "add", "--id", "db-p1", "--role",
                                "app", "--owner", "team-a", cwd=str(tmp_path))
    assert status == 0, err
    assert "db-p1: role=app, owner=team-a set in" in out
    assert (inventory / "host_vars" / "db-p1.yml").read_text() == DB_VARS.replace(
        "role: db   # was db\n", "role: app   # was db\n  owner: team-a\n")
    # the host is now an app server: web-p1 reaches it by rule 1024
    status, out, _err = mseg_cli(cli, "-i", str(inventory), "trace", "--src", "web-p1", "--dst", "db-p1", "--port",
                                 "tcp/8080", cwd=str(tmp_path))
    assert status == 0 and "by rule 1024" in out, out


@pytest.mark.parametrize("argv, message", [
    (["--id", "db-p9", "--role", "db"], "host db-p9 is not in the inventory"),
    (["--id", "web-p2", "--role", "{{ undefined_label }}"], "with these labels the policy or inventory is invalid, "
     "so %s/host_vars/web-p2.yml was not changed"),
    (["--id", "hist-p1", "--role", "db"], "hist-p1's mseg_tags are written in the inventory source itself"),
])
def test_tag_add_refusals_leave_the_inventory_as_it_was(cli, inventory, tmp_path, argv, message):
    before = snapshot(inventory)
    status, out, err = mseg_cli(cli, "-i", str(inventory), "tag", "add", *argv, cwd=str(tmp_path))
    assert status == 2 and out == "", err
    assert (message % inventory if "%s" in message else message) in err and "Traceback" not in err
    assert snapshot(inventory) == before


def test_an_inventory_that_cannot_be_parsed_is_named_and_left_alone(cli, inventory, tmp_path):
    (inventory / "group_vars" / "web" / "main.yml").write_text("mseg_tags: {role: web\n")
    before = snapshot(inventory)
    status, out, err = mseg_cli(cli, "-i", str(inventory), "tag", "add", "--id", "db-p1", "--role", "app",
                                cwd=str(tmp_path))
    assert status == 2 and out == ""
    assert "cannot parse the inventory %s" % inventory in err and "Traceback" not in err, err
    assert snapshot(inventory) == before


def test_an_interrupted_tag_add_leaves_the_inventory_as_it_was(cli, inventory, tmp_path):
    before = snapshot(inventory)
    command, env = cli
    proc = subprocess.Popen(command + ["-i", str(inventory), "tag", "add", "--id", "db-p1", "--role", "app"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    assert proc.stderr.readline() == "compiling the fleet policy with the new labels ...\n"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the run was stopped; the inventory is as it was" in err and out == ""
    assert snapshot(inventory) == before


OK, WHY = available()


def policy(peer):
    return {"defaults": {"ingress": "deny", "egress": "allow"},
            "rules": [{"id": 10, "name": "peer-to-h", "from": {"cidr": [peer]}, "to": {"hosts": ["h"]},
                       "ports": ["tcp/8080"]}]}


@pytest.mark.skipif(not OK, reason=WHY)
def test_mode_set_status_and_policy_commit_on_a_host(cli, tmp_path):
    """mseg-cli on the control node drives host "h" (a network namespace, local connection); "p" sends packets."""
    with Fleet(["h", "p"], ipv6=False) as fleet:
        for name in ("upper", "work"):
            (tmp_path / name).mkdir()
        inventory = tmp_path / "hosts.yml"
        inventory.write_text(yaml.safe_dump({"all": {"hosts": {"h": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "mseg_addresses": [fleet.addr("h")], "mseg_tags": {"role": "web", "zone": "dmz"}, "mseg_mode": "observe"}},
            "vars": {"mseg_become": False, "policy_droplog": False, "mseg_policy": policy(fleet.addr("p"))}}}))

        def run(*argv):
            command, env = cli
            proc = fleet.run("h", ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox",
                                   str(tmp_path)] + command + ["-i", str(inventory)] + list(argv),
                             check=False, timeout=300, env=env)
            return proc.returncode, proc.stdout, proc.stderr

        def table():
            proc = fleet.run("h", ["nft", "list", "table", "inet", "mseg"], check=False)
            return proc.stdout if proc.returncode == 0 else ""

        status, out, err = run("mode", "set", "enforce", "--limit", "h-typo")
        assert status == 2 and "--limit: h-typo is neither a host nor a group" in err and table() == ""

        status, out, err = run("mode", "set", "enforce", "--zone", "dmz")
        assert status == 0, err
        assert out == "mode enforce set on h\n" and "-- Set the enforcement mode" not in err
        assert "== Set the enforcement mode" in err and "changed          h" in err
        assert fleet.probe("p", "h", 5432) != CONNECTED and fleet.probe("p", "h", 8080) == CONNECTED

        status, out, err = run("mode", "set", "observe", "--zone", "nowhere", "-q")
        assert status == 0 and "no host carries zone=nowhere" in out and fleet.probe("p", "h", 5432) != CONNECTED

        status, out, err = run("mode", "set", "bypass", "--all-zones", "--quiet")
        assert status == 0 and err == "", err
        assert "counter emergency_bypass" in table() and fleet.probe("p", "h", 5432) == CONNECTED

        status, out, err = run("status", "--no-become", "-q")
        assert status == 0 and out.split(None, 1) == ["h", "table inet mseg, 2 counters, markers: emergency_bypass, mode_bypass\n"]

        # the emergency bypass stays until a mode set lifts it: a commit is refused on that host, nothing changes
        status, out, err = run("policy", "commit", "--atomic", "-q")
        assert status == 1 and "h is in bypass" in err, err
        assert "counter emergency_bypass" in table()

        status, out, err = run("mode", "set", "observe", "--limit", "h", "-q")
        assert status == 0 and "bypass" not in table() and fleet.probe("p", "h", 5432) == CONNECTED, err
        # the inventory now says enforce: the commit rolls it out (a canary batch of one, its health checked)
        inventory.write_text(inventory.read_text().replace("mseg_mode: observe", "mseg_mode: enforce"))
        status, out, err = run("policy", "commit", "--atomic")
        assert status == 0 and out == "policy committed; hosts changed: h\n", err
        assert "-- Check the health of this host" in err
        assert fleet.probe("p", "h", 5432) != CONNECTED and fleet.probe("p", "h", 8080) == CONNECTED
