"""The host_code lookup lists exactly what the agent role's remote command lists on a host with the same files.

The agent role copies only the lines that differ, so a mismatch in format would copy every file on every run (or,
worse, never copy a changed one): the command is read from the role, run on a real copy, and compared line by line.
"""

import os
import shutil
import subprocess

import pytest
import yaml

from ansible.errors import AnsibleLookupError
from ansible_collections.mseg.fleet.plugins.lookup.host_code import MODULE_UTILS, package_lines

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
CODE_TASKS = os.path.join(ROOT, "roles", "agent", "tasks", "code.yml")
PACKAGES = yaml.safe_load(open(os.path.join(ROOT, "roles", "agent", "vars", "main.yml"), encoding="utf-8"))[
    "__agent_packages"]


def host_listing(lib_dir):
    """Run the role's own listing command against lib_dir, as the role does on a host."""
    tasks = yaml.safe_load(open(CODE_TASKS, encoding="utf-8"))
    task = next(t for t in tasks if "sha256sum" in str(t.get("ansible.builtin.shell", "")))
    cmd = task["ansible.builtin.shell"]["cmd"]
    target = os.path.join(lib_dir, "ansible_collections", "mseg", "fleet", "plugins", "module_utils")
    cmd = cmd.replace("{{ __agent_code_dir | quote }}", target)
    assert "{{" not in cmd, cmd
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True)
    return proc.stdout.splitlines()


def install(lib_dir):
    target = os.path.join(lib_dir, "ansible_collections", "mseg", "fleet", "plugins", "module_utils")
    for package in PACKAGES:
        shutil.copytree(os.path.join(MODULE_UTILS, package), os.path.join(target, package),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def test_a_host_with_the_same_files_lists_the_same_lines(tmp_path):
    target = install(str(tmp_path))
    os.makedirs(os.path.join(target, "agent", "__pycache__"))
    open(os.path.join(target, "agent", "__pycache__", "cli.cpython-311.pyc"), "wb").close()
    wanted = package_lines(MODULE_UTILS, PACKAGES)
    assert len(wanted) > 20
    assert sorted(host_listing(str(tmp_path))) == sorted(wanted)


def test_a_changed_and_a_stale_file_are_the_only_differences(tmp_path):
    target = install(str(tmp_path))
    with open(os.path.join(target, "nft", "model.py"), "a", encoding="utf-8") as handle:
        handle.write("# tampered\n")
    open(os.path.join(target, "agent", "stale.py"), "w").close()
    wanted = package_lines(MODULE_UTILS, PACKAGES)
    have = host_listing(str(tmp_path))
    assert [line.split("  ./")[1] for line in sorted(set(wanted) - set(have))] == ["nft/model.py"]
    assert sorted(line.split("  ./")[1] for line in set(have) - set(wanted)) == ["agent/stale.py", "nft/model.py"]


def test_a_host_without_the_directory_lists_nothing(tmp_path):
    assert host_listing(str(tmp_path / "absent")) == []


def test_an_unknown_package_is_one_clear_error():
    with pytest.raises(AnsibleLookupError, match=r"'compiel' is not a package of plugins/module_utils .*use one of: .*compile"):
        package_lines(MODULE_UTILS, ["compiel"])
