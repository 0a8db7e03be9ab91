"""docs/tutorial.md against the repository: every command it gives must exist as written.

The tutorial runs on the lab, which the unit tests cannot boot; these checks catch the drift that would make a reader
stumble: a ``make`` target or variable the Makefile lacks, a playbook, module or role of mseg.fleet that is not
there, an extra variable its playbook never reads, a module option the module does not take, a host or group the
lab inventory does not have, a variable or role option named in the prose that nothing defines.
"""

import ast
import json
import os
import re
import shlex

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")
# The five steps of the specification, in its order.
STEPS = ["capture the baseline of legitimate flows", "prepare the kernels", "deploy the enforcement agent",
         "assign identity tags", "from observation to enforcement"]


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as handle:
        return handle.read()


def commands():
    """Every command of the tutorial's shell blocks, as argument lists (continuation lines joined)."""
    found = []
    for block in re.findall(r"^```sh\n(.*?)^```", read("docs", "tutorial.md"), flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split(";"):
                words = shlex.split(command, comments=True)
                if words:
                    found.append(words)
    return found


def extra_vars(words):
    """The names of the ``-e`` variables of one command (key=value or a JSON object)."""
    names = []
    for flag, value in zip(words, words[1:]):
        if flag != "-e":
            continue
        if value.startswith("{"):
            names.extend(json.loads(value))
        else:
            names.append(value.split("=", 1)[0])
    return names


def make_targets():
    return set(re.findall(r"^([a-z][a-zA-Z_-]*):", read("Makefile"), flags=re.M))


def module_options(name):
    tree = ast.parse(read("plugins", "modules", name + ".py"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
            return set(yaml.safe_load(node.value.value).get("options") or {})
    raise AssertionError("plugins/modules/%s.py has no DOCUMENTATION" % name)


def lab_names():
    """The hosts and groups of inventories/lab."""
    names = {"all"}

    def walk(group):
        for host in (group or {}).get("hosts") or {}:
            names.add(host)
        for child, sub in ((group or {}).get("children") or {}).items():
            names.add(child)
            walk(sub)

    walk(yaml.safe_load(read("inventories", "lab", "hosts.yml"))["all"])
    return names


def pattern_names(pattern):
    return [part.lstrip("!&") for part in re.split(r"[,:]", pattern) if part.lstrip("!&")]


def playbook_text(name):
    """The playbook's own text and that of the playbooks it imports."""
    text = read("playbooks", name + ".yml")
    for imported in re.findall(r"import_playbook: ([a-z_]+)\.yml", text):
        text += playbook_text(imported)
    return text


def test_the_five_steps_in_order():
    headings = [line.lower() for line in read("docs", "tutorial.md").splitlines() if line.startswith("## Step ")]
    assert len(headings) == len(STEPS)
    for number, (heading, step) in enumerate(zip(headings, STEPS), start=1):
        assert heading.startswith("## step %d:" % number) and step in heading, heading


def test_make_targets_and_variables_exist():
    targets, makefile = make_targets(), read("Makefile")
    made = [words for words in commands() if words[0] == "make"]
    assert {"lab-up", "lab-matrix", "lab-down"} <= {word for words in made for word in words}
    for words in made:
        for word in words[1:]:
            if "=" in word:
                assert re.search(r"^%s \?=" % re.escape(word.split("=")[0]), makefile, flags=re.M), word
            else:
                assert word in targets, "make %s: no such target in the Makefile" % word
    for target in re.findall(r"`make ([a-z-]+)", read("docs", "tutorial.md")):
        assert target in targets, "make %s: no such target in the Makefile" % target


def test_playbooks_and_their_extra_vars_exist():
    contract = read("plugins", "plugin_utils", "inventory.py")
    runs = [words for words in commands() if words[0] == "ansible-playbook"]
    assert len(runs) > 15
    for words in runs:
        assert words[1:3] == ["-i", "inventories/lab"], words
        names = [word for word in words if word.startswith("mseg.fleet.")]
        assert len(names) == 1, words
        playbook = names[0][len("mseg.fleet."):]
        assert os.path.isfile(os.path.join(ROOT, "playbooks", playbook + ".yml")), names[0]
        text = playbook_text(playbook)
        for var in extra_vars(words):
            # a playbook variable, or an inventory contract variable that the compile reads from hostvars
            assert re.search(r"\b%s\b" % var, text) or '"%s"' % var in contract, "%s: %s is not read" % (names[0], var)


def test_ad_hoc_modules_take_the_options_given():
    runs = [words for words in commands() if words[0] == "ansible"]
    assert len(runs) >= 4
    for words in runs:
        module = words[words.index("-m") + 1]
        assert module.startswith("mseg.fleet."), words
        args = words[words.index("-a") + 1]
        given = json.loads(args) if args.startswith("{") else dict(pair.split("=", 1) for pair in args.split())
        unknown = set(given) - module_options(module[len("mseg.fleet."):])
        assert not unknown, "%s has no option %s" % (module, sorted(unknown))


def test_hosts_and_groups_exist_in_the_lab():
    names = lab_names()
    for words in commands():
        patterns = []
        if words[0] == "ansible":
            patterns.append(words[3])
        for flag, value in zip(words, words[1:]):
            if flag == "--limit":
                patterns.append(value)
            elif flag == "-e" and value.split("=", 1)[0] in ("mseg_hosts", "mseg_trace_src", "mseg_trace_dst"):
                value = value.split("=", 1)[1]
                if "=" not in value:  # a tag expression (role=web) names no host
                    patterns.append(value)
        for pattern in patterns:
            for name in pattern_names(pattern):
                assert name in names, "%s is not a host or group of inventories/lab" % name


def test_names_in_the_prose_exist():
    """mseg.fleet.X is a playbook, module or role; every mseg_ and role variable is defined somewhere."""
    text = read("docs", "tutorial.md")
    for name in set(re.findall(r"\bmseg\.fleet\.([a-z_]+)\b", text)):
        assert any(os.path.exists(os.path.join(ROOT, *path)) for path in (
            ("playbooks", name + ".yml"), ("plugins", "modules", name + ".py"), ("roles", name))), name
    sources = "".join(read(os.path.relpath(os.path.join(base, name), ROOT))
                      for top in ("playbooks", "plugins", "roles", "inventories")
                      for base, _dirs, files in os.walk(os.path.join(ROOT, top))
                      for name in files if name.endswith((".yml", ".py")))
    for var in set(re.findall(r"\b((?:mseg|kernel_prereqs)_[a-z0-9_]+)", text)):
        assert re.search(r"\b%s\b" % var, sources), "%s is defined nowhere" % var
    for var in re.findall(r"\b(kernel_prereqs_[a-z0-9_]+)", text):
        assert "      %s:" % var in read("roles", "kernel_prereqs", "meta", "argument_specs.yml"), var


@pytest.mark.parametrize("path", re.findall(r"`((?:inventories|roles|docs)/[A-Za-z0-9_./-]+)`",
                                            open(TUTORIAL, encoding="utf-8").read()))
def test_repository_paths_exist(path):
    assert os.path.exists(os.path.join(ROOT, path)), path
