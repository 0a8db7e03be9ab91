"""The agent role installs the host CLI by the contract's names, and runs no program written inline in YAML."""

import glob
import os
import re

import yaml

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLE = os.path.join(ROOT, "roles", "agent")
COMMAND_MODULES = ("command", "ansible.builtin.command", "shell", "ansible.builtin.shell",
                   "raw", "ansible.builtin.raw")
INLINE = re.compile(r"\b(?:python[0-9.]*|perl|ruby|node|sh|bash)\s+-(?:c|e)\b")


def read(*parts):
    with open(os.path.join(ROLE, *parts), encoding="utf-8") as handle:
        return handle.read()


def test_the_units_run_the_service_command_with_its_verbs():
    names = yaml.safe_load(read("vars", "main.yml"))
    assert names["__agent_command"] == "{{ 'HOST_CLI_DIR' | mseg.fleet.wire }}/{{ 'AGENT_COMMAND' | mseg.fleet.wire }}"
    assert names["__agent_commands"] == ["{{ 'AGENT_COMMAND' | mseg.fleet.wire }}",
                                         "{{ 'HOST_CLI' | mseg.fleet.wire }}"]
    verbs = []
    for unit in ("mseg-agent.service.j2", "mseg-agent-restore.service.j2", "mseg-droplog.service.j2"):
        text = read("templates", "etc", "systemd", "system", unit)
        starts = re.findall(r"^ExecStart=(\{\{ \w+ \}\}|\S+) (\S+)(?: .*)?$", text, re.M)
        assert [command for command, _verb in starts] == ["{{ __agent_command }}"]
        verbs += [verb for _command, verb in starts]
    assert sorted(verbs) == sorted(contract.AGENT_COMMANDS)


def test_the_entry_point_runs_the_cli_of_the_installed_packages():
    entry = read("templates", "usr", "sbin", "entry.j2")
    module = re.search(r"^from (\S+) import main\b", entry, re.M).group(1)
    assert module == "ansible_collections.mseg.fleet.plugins.module_utils.agent.cli"
    assert module.split(".")[5] in yaml.safe_load(read("vars", "main.yml"))["__agent_packages"]
    assert 'main(prog="{{ item }}")' in entry


def inline_programs(tasks):
    """The command lines among ``tasks`` (and their blocks) that run a program given inline (``python3 -c ...``)."""
    found = []
    for task in tasks or ():
        found += inline_programs(task.get("block")) + inline_programs(task.get("rescue"))
        for module in COMMAND_MODULES:
            if module not in task:
                continue
            args = task[module]
            line = " ".join(args.get("argv") or [args.get("cmd") or ""]) if isinstance(args, dict) else str(args)
            if INLINE.search(line):
                found.append(line)
    return found


def test_no_role_runs_a_program_written_inline():
    found = {}
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "tasks", "*.yml")):
        with open(path, encoding="utf-8") as handle:
            bad = inline_programs(yaml.safe_load(handle))
        if bad:
            found[os.path.relpath(path, ROOT)] = bad
    assert found == {}


def test_the_search_sees_an_inline_program():
    """The walk above must be able to fail: the task this role had before connection_facts is reported."""
    task = {"name": "Find the address", "ansible.builtin.command": {"argv": [
        "/usr/bin/python3", "-c", "import sys; print(sys.argv)"]}}
    assert inline_programs([{"block": [task]}]) == ["/usr/bin/python3 -c import sys; print(sys.argv)"]
    assert inline_programs([{"ansible.builtin.command": {"argv": ["/usr/sbin/mseg", "status", "--json"]}}]) == []


def _render(name, **values):
    import jinja2
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
        read("templates", "etc", "systemd", "system", name)).render(**values)


def test_renewed_tls_files_reach_the_running_agent():
    """Issue 15 item 10: with LoadCredential= systemd copied the TLS files once, at service start, so a renewal never
    reached the running agent (which re-reads its files when they change). The agent now reads root-owned copies
    its group may read, and a path unit copies them again whenever the pki role renews one."""
    names = yaml.safe_load(read("vars", "main.yml"))
    share = names["__agent_tls_share"]
    files = ["agent.key", "agent.crt", "ca.crt", "crl.pem"]
    assert "LoadCredential=" not in read("templates", "etc", "systemd", "system", "mseg-agent.service.j2").replace(
        "not LoadCredential=", "")
    tasks = yaml.safe_load(read("tasks", "main.yml"))
    config = next(t for t in tasks if t["name"] == "Write the agent's configuration")["vars"]["__agent_config"]
    assert [config[key] for key in ("tls_key", "tls_cert", "tls_ca")] == [
        "{{ __agent_tls_share }}/%s" % name for name in files[:3]]
    assert "__agent_tls_share ~ '/crl.pem'" in config["tls_crl"]
    copy = next(t for t in tasks if t["name"].startswith("Hand the agent its TLS files"))
    assert (copy["ansible.builtin.copy"]["owner"], copy["ansible.builtin.copy"]["mode"], copy["no_log"]) == (
        "root", "0640", True)
    values = {"ansible_managed": "x", "agent_tls_dir": "/etc/mseg/tls", "agent_user": "mseg-agent",
              "__agent_tls_share": share, "__agent_tls_files": files}
    watched = re.findall(r"^PathChanged=(\S+)$", _render("mseg-agent-tls.path.j2", **values), re.M)
    assert watched == ["/etc/mseg/tls/" + name for name in files]
    service = _render("mseg-agent-tls.service.j2", **values)
    for name in files:  # each copied root:group 0640 beside its place, then renamed over it (never half a file)
        assert ("ExecStart=/usr/bin/install -o root -g mseg-agent -m 0640 -T /etc/mseg/tls/%s %s/.%s.new\n"
                "ExecStart=/bin/mv -f -T %s/.%s.new %s/%s\n" % (name, share, name, share, name, share, name)) in service
