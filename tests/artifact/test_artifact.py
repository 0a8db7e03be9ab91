"""The Galaxy artifact: built with ansible-galaxy from the tracked files, installed into an empty collection path
outside the checkout, and run from there (render and trace over the shipped lab inventory, every plugin imported),
with an audit hook proving that nothing is read from the checkout; galaxy-importer judges the tarball; the execution
environment's build context is created with ansible-builder.

Run by `make artifact` (a stage of `make test`), which provides the tools' own virtualenv in MSEG_ARTIFACT_VENV.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

CHECKOUT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.environ.get("MSEG_ARTIFACT_VENV", os.path.join(CHECKOUT, ".build", "artifact-venv"))
BIN = os.path.dirname(sys.executable)
GALAXY = yaml.safe_load(open(os.path.join(CHECKOUT, "galaxy.yml"), encoding="utf-8"))
TARBALL = "%s-%s-%s.tar.gz" % (GALAXY["namespace"], GALAXY["name"], GALAXY["version"])


def clean_env():
    """The environment without Ansible's settings: `make` points ANSIBLE_COLLECTIONS_PATH at the checkout."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MSEG_"))}


def run(cmd, cwd, env=None, timeout=120):
    proc = subprocess.run(cmd, cwd=cwd, check=False, env=clean_env() if env is None else env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, "%s failed (%d):\n%s\n%s" % (cmd, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """Build the tarball from a copy of the tracked files and install it, without dependencies, into an empty path."""
    base = tmp_path_factory.mktemp("artifact")
    assert not str(base).startswith(CHECKOUT + os.sep)
    src = base / "src"
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT).stdout
    subprocess.run(["rsync", "-a", "--from0", "--files-from=-", "./", str(src) + "/"], cwd=CHECKOUT, input=files,
                   text=True, check=True, env=clean_env())
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(base)], cwd=str(src))
    shutil.rmtree(str(src))
    install = base / "collections"
    install.mkdir()
    # with only the empty path to look in: a copy elsewhere (~/.ansible) would make ansible-galaxy skip the install
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "--no-deps", "-p", str(install),
         str(base / TARBALL)], cwd=str(base), env=dict(clean_env(), ANSIBLE_COLLECTIONS_PATH=str(install)))
    root = install / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    return {"base": base, "tarball": base / TARBALL, "install": install, "root": root}


def guarded_env(artifact, name):
    """ANSIBLE_COLLECTIONS_PATH names only the install; the audit hook logs any file read from the checkout."""
    site = artifact["base"] / ("guard-" + name)
    site.mkdir()
    shutil.copy(os.path.join(CHECKOUT, "tests", "artifact", "guard.py"), str(site / "sitecustomize.py"))
    log = artifact["base"] / ("guard-%s.log" % name)
    env = clean_env()
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(artifact["install"]),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(artifact["base"] / "tmp"),
        "PYTHONPATH": str(site),
        "MSEG_GUARD_ROOT": CHECKOUT,
        "MSEG_GUARD_ALLOW": os.pathsep.join(os.path.realpath(p) for p in (os.path.join(CHECKOUT, ".venv"), TOOLS)),
        "MSEG_GUARD_LOG": str(log),
    })
    return env, log


def assert_nothing_from_checkout(log):
    assert not log.exists(), "read from the checkout instead of the artifact:\n" + log.read_text()[:4000]


def test_guard_sees_a_read_from_the_checkout(artifact):
    """The guard itself: a Python that opens a file of the checkout is caught."""
    env, log = guarded_env(artifact, "self")
    run([sys.executable, "-c", "open(%r).read()" % os.path.join(CHECKOUT, "galaxy.yml")], cwd=str(artifact["base"]), env=env)
    assert "galaxy.yml" in log.read_text()


def test_every_plugin_imports_from_the_install(artifact):
    env, log = guarded_env(artifact, "imports")
    script = """
import importlib, json, os, sys
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder
_AnsibleCollectionFinder(paths=[sys.argv[1]])._install()
root = os.path.join(sys.argv[1], "ansible_collections", "mseg", "fleet", "plugins")
loaded = {}
for kind in ("modules", "action", "filter", "lookup"):
    for name in sorted(os.listdir(os.path.join(root, kind))):
        if name.endswith(".py") and name != "__init__.py":
            mod = importlib.import_module("ansible_collections.mseg.fleet.plugins.%s.%s" % (kind, name[:-3]))
            loaded[mod.__name__] = os.path.realpath(mod.__file__)
print(json.dumps(loaded))
"""
    out = run([sys.executable, "-c", script, str(artifact["install"])], cwd=str(artifact["base"]), env=env).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "ansible_collections.mseg.fleet.plugins.modules.nft_apply" in loaded
    assert "ansible_collections.mseg.fleet.plugins.action.compile" in loaded
    root = os.path.realpath(str(artifact["root"]))
    assert [p for p in loaded.values() if not p.startswith(root + os.sep)] == []
    assert_nothing_from_checkout(log)


def test_render_and_trace_run_from_the_install(artifact):
    """The lab inventory shipped in the artifact, rendered and traced by the installed playbooks from outside the
    checkout; no host is contacted."""
    env, log = guarded_env(artifact, "playbooks")
    inventory = str(artifact["root"] / "inventories" / "lab")
    out = artifact["base"] / "render"
    playbook = os.path.join(BIN, "ansible-playbook")
    run([playbook, "-i", inventory, "mseg.fleet.render", "-e", "mseg_render_dir=%s" % out],
        cwd=str(artifact["base"]), env=env, timeout=180)
    plan = json.loads((out / "plan.json").read_text())
    assert plan, "plan.json is empty"
    rulesets = sorted(p.name for p in out.glob("*.nft"))
    assert "web-01.nft" in rulesets and "db-01.nft" in rulesets
    assert "table inet mseg" in (out / "db-01.nft").read_text()
    # the lab policy (inventories/lab/group_vars/all/policy.yml): rule 700 denies web to db, rule 400 lets app in
    for src, verdict in (("web-01", r"DENY .*by rule 700 \(no-web-to-db\)"), ("app-01", r"ALLOW .*by rule 400 \(app-to-db\)")):
        trace = run([playbook, "-i", inventory, "mseg.fleet.trace", "-e", "mseg_trace_src=" + src,
                     "-e", "mseg_trace_dst=db-01", "-e", "mseg_trace_port=tcp/5432"],
                    cwd=str(artifact["base"]), env=env, timeout=180).stdout
        lines = [line for line in trace.splitlines() if re.search(r"\b%s\s+-> db-01\s+tcp/5432" % src, line)]
        assert len(lines) == 2 and all(re.search(verdict, line) for line in lines), trace[-3000:]
    assert_nothing_from_checkout(log)


def test_mseg_cli_installs_from_the_artifact_and_traces(artifact):
    """docs/cli.md's install: pip install of the installed collection's cli/; the command then traces the shipped lab
    inventory with the installed playbooks, reading nothing from the checkout."""
    site = artifact["base"] / "cli-site"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(artifact["root"] / "cli")],
        cwd=str(artifact["base"]), timeout=300)
    env, log = guarded_env(artifact, "cli")
    env["PYTHONPATH"] += os.pathsep + str(site)
    proc = subprocess.run([str(site / "bin" / "mseg-cli"), "-i", str(artifact["root"] / "inventories" / "lab"), "trace",
                           "--src", "web-01", "--dst", "db-01", "--port", "tcp/5432"], cwd=str(artifact["base"]),
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(re.search(r"DENY .*by rule 700 \(no-web-to-db\)", line) for line in lines), lines
    assert_nothing_from_checkout(log)


# Paths the docs name on a managed host that look like repository paths (roles/agent/README.md: the agent's state
# directory /var/lib/mseg-agent/nft/).
HOST_FILES = {"nft/ruleset.json"}


def test_docs_name_only_files_the_artifact_has(artifact):
    """Every repository path that the README and docs/ name in backquotes is in the artifact."""
    root = artifact["root"]
    tops = set(run(["git", "ls-tree", "--name-only", "HEAD"], cwd=CHECKOUT).stdout.split())
    utils = set(os.listdir(os.path.join(CHECKOUT, "plugins", "module_utils")))
    docs = [root / "README.md"] + sorted((root / "docs").glob("*.md")) + sorted(root.glob("roles/*/README.md"))
    missing, named = [], 0
    for doc in docs:
        for path in re.findall(r"`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.<>-]*)*)`", doc.read_text()):
            first = path.split("/")[0]
            if path.startswith(".build/") or path in HOST_FILES or "<" in path or (first not in tops and not (first in utils and "/" in path)):
                continue
            named += 1
            bases = [root, root / "plugins" / "module_utils", doc.parent] + sorted(root.glob("roles/*"))
            if not any((base / path).exists() for base in bases):
                missing.append("%s: %s" % (doc.relative_to(root), path))
    assert named > 20
    assert missing == [], "\n".join(missing)


COLLECTION_USE_YML = r"\b(ansible\.posix|community\.[a-z_]+|awx\.awx)\.[a-z_]+"
COLLECTION_USE_PY = r"(?:ansible_collections\.|[\"'])(ansible\.posix|community\.[a-z_]+|awx\.awx)\.[a-z_]+"
# Collections that only one directory uses and that are therefore no dependency of mseg.fleet (docs/awx.md): awx.awx,
# which mseg.fleet.awx.configure needs to load the job templates into AWX, and nothing else may use.
OPTIONAL = {"awx.awx": "playbooks/awx"}


def test_requires_ansible_and_dependencies(artifact):
    manifest = json.loads(tarfile.open(str(artifact["tarball"])).extractfile("MANIFEST.json").read())
    deps = manifest["collection_info"]["dependencies"]
    used = set()
    for dirpath, _dirs, names in os.walk(str(artifact["root"])):
        for name in names:
            if "/molecule/" in dirpath or "/tests/" in dirpath:
                continue
            text = open(os.path.join(dirpath, name), encoding="utf-8").read() if name.endswith((".yml", ".py")) else ""
            # a task, a filter or a lookup in YAML; an import or a module name in quotes in Python (not the
            # `seealso` of a module's documentation, which names a collection it does not use)
            pattern = COLLECTION_USE_YML if name.endswith(".yml") else COLLECTION_USE_PY
            where = os.path.relpath(dirpath, str(artifact["root"])) + os.sep
            used.update(c for c in re.findall(pattern, text) if not where.startswith(OPTIONAL.get(c, "-") + os.sep))
    assert sorted(deps) == sorted(used)
    runtime = yaml.safe_load((artifact["root"] / "meta" / "runtime.yml").read_text())
    assert runtime["requires_ansible"] == ">=2.16.0"


def tool(name):
    path = os.path.join(TOOLS, "bin", name)
    if not os.path.exists(path):
        pytest.fail("%s is missing: run `make artifact`, which installs tests/artifact/requirements.txt into %s" % (name, TOOLS))
    return path


def test_galaxy_importer_reports_no_error(artifact):
    home = artifact["base"] / "importer-home"
    home.mkdir()
    env = dict(clean_env(), HOME=str(home), PATH=os.path.join(TOOLS, "bin") + os.pathsep + os.environ["PATH"],
               GALAXY_IMPORTER_RUN_ANSIBLE_LINT="false")
    proc = run([tool("python"), "-m", "galaxy_importer.main", str(artifact["tarball"])], cwd=str(artifact["base"]),
               env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert "Importer processing completed successfully" in output
    assert [line for line in output.splitlines() if "ERROR" in line] == []


def test_execution_environment_build_context(artifact):
    """ansible-builder creates the build context from the installed meta/execution-environment.yml, and its
    introspection of the installed collection yields the runtime dependencies, not the development pins."""
    context = artifact["base"] / "ee-context"
    definition = artifact["root"] / "meta" / "execution-environment.yml"
    run([tool("ansible-builder"), "create", "-f", str(definition), "-c", str(context), "--output-filename", "Containerfile"],
        cwd=str(artifact["base"]))
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/fedora/fedora:41"' in containerfile
    build = context / "_build"
    assert "netaddr" in (build / "requirements.txt").read_text()
    assert "openssh-clients [platform:rpm]" in (build / "bindep.txt").read_text()
    assert "community.crypto" in (build / "requirements.yml").read_text()
    intro = run([tool("ansible-builder"), "introspect", "--sanitize", str(artifact["install"])],
                cwd=str(artifact["base"])).stdout
    found = yaml.safe_load(intro)
    python = [line.split()[0] for line in found["python"]]
    system = [line.split("#")[0].strip() for line in found["system"]]
    # --sanitize drops PyYAML, which every image gets with ansible-core
    assert python == ["netaddr>=0.10.1", "cryptography>=41.0.0", "dpkt>=1.9.8"]
    assert system == ["openssh-clients [platform:rpm]", "openssh-client [platform:dpkg]", "graphviz [platform:rpm]",
                      "graphviz [platform:dpkg]"]
