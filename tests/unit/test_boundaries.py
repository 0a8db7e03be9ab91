"""The code's boundaries: what runs on a managed host never imports the compiler, the renderers, the lab or Ansible.

The agent role installs the packages in ``__agent_packages`` (the host closure). These tests walk the imports of
every file in the closure, and run the agent's own unit tests with nothing but the closure on the import path.
"""

import ast
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
PREFIX = "ansible_collections.mseg.fleet.plugins.module_utils."
FORBIDDEN = ("compile", "render", "_lab")


def closure_packages():
    with open(os.path.join(ROOT, "roles", "agent", "vars", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["__agent_packages"]


def imports_of(path):
    """Every module name ``path`` imports (absolute imports, the only kind the collection uses)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found.extend("%s.%s" % (node.module, alias.name) for alias in node.names)
    return found


def closure_files():
    for package in closure_packages():
        for directory, _dirs, files in os.walk(os.path.join(MODULE_UTILS, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def test_the_closure_is_a_list_of_packages_that_exist():
    packages = closure_packages()
    assert packages and all(os.path.isfile(os.path.join(MODULE_UTILS, p, "__init__.py")) for p in packages)
    assert not set(packages) & set(FORBIDDEN)


def test_the_host_closure_imports_neither_the_compiler_nor_the_lab_nor_ansible():
    packages = set(closure_packages())
    bad = []
    for path in closure_files():
        for name in imports_of(path):
            where = os.path.relpath(path, ROOT)
            if name.split(".")[0] == "ansible":
                bad.append("%s imports %s (hosts run the agent without Ansible)" % (where, name))
            elif name.startswith(PREFIX):
                package = name[len(PREFIX):].split(".")[0]
                if package not in packages:
                    bad.append("%s imports %s, outside the host closure %s" % (where, name, sorted(packages)))
            elif name == "netaddr":
                bad.append("%s imports netaddr, which managed hosts do not have" % where)
    assert bad == []


def test_the_walk_sees_a_forbidden_import(tmp_path):
    """The walk above must be able to fail: a file importing the compiler or a renderer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ansible_collections.mseg.fleet.plugins.module_utils.compile import fleet\n"
                   "from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan\n")
    found = {name[len(PREFIX):].split(".")[0] for name in imports_of(str(bad)) if name.startswith(PREFIX)}
    assert found == {"compile", "render"} and found <= set(FORBIDDEN)


def test_the_agent_tests_pass_with_only_the_closure(tmp_path):
    """Copy the closure alone into an empty collection tree and run the agent's unit tests against it."""
    target = tmp_path / "collections" / "ansible_collections" / "mseg" / "fleet" / "plugins" / "module_utils"
    target.mkdir(parents=True)
    for parent in (target.parent.parent.parent, target.parent.parent, target.parent):
        (parent / "__init__.py").write_text("")
    (target / "__init__.py").write_text("")
    for package in closure_packages():
        subprocess.run(["cp", "-r", os.path.join(MODULE_UTILS, package), str(target / package)], check=True)
    tests = tmp_path / "tests"
    tests.mkdir()
    subprocess.run(["cp", "-r", os.path.join(ROOT, "tests", "unit", "agent"), str(tests / "agent")], check=True)
    (tests / "conftest.py").write_text(
        "import sys\nsys.modules['netaddr'] = None\nsys.path.insert(0, %r)\n" % str(tmp_path / "collections"))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(tests), str(tests)], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
