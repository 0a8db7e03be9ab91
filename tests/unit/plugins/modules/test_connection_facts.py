"""mseg.fleet.connection_facts reports the SSH peer the apply engine's own detection finds, run as Ansible runs it."""

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.mseg.fleet.plugins.modules import connection_facts

# the directory that holds ansible_collections/mseg/fleet, as the module was imported from it
COLLECTIONS = connection_facts.__file__.rsplit(os.sep + "ansible_collections" + os.sep, 1)[0]


def run_module(tmp_path, environ, check_mode=False):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"_ansible_check_mode": check_mode}}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("SSH_")}
    env.update(environ, PYTHONPATH=COLLECTIONS)
    proc = subprocess.run([sys.executable, connection_facts.__file__, str(args)], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("check_mode", [False, True])
def test_the_ssh_peer_of_the_connection(tmp_path, check_mode):
    result = run_module(tmp_path, {"SSH_CONNECTION": "::ffff:192.0.2.10 50000 192.0.2.20 2222"}, check_mode)
    assert result["changed"] is False
    assert result["ansible_facts"] == {"mseg_connection": {"ssh": True, "address": "192.0.2.10", "port": 2222}}


def test_a_connection_that_is_not_ssh():
    assert connection_facts.connection_fact(None) == {"ssh": False, "address": None, "port": None}
