"""gather_fleet reads every host's variables as hostvars would, without running get_vars for every host."""

import os

import pytest
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager
from ansible_collections.mseg.fleet.plugins.plugin_utils.inventory import HOST_VARIABLES, gather_fleet

INVENTORY = """\
all:
  vars:
    mseg_management: [{cidr: 10.250.0.0/24, ports: [tcp/22]}]
  children:
    web:
      hosts:
        web-01: {ansible_host: 10.0.0.1, mseg_tags: {env: prod}}
        web-02: {ansible_host: 10.0.0.2, mseg_mode: observe}
        web-03: {ansible_host: 10.0.0.3, mseg_addresses: ["{{ ansible_host }}", "fd00::3"]}
      children:
        canary:
          hosts:
            web-04: {ansible_host: 10.0.0.4}
    db:
      vars: {mseg_mode: enforce, mseg_tags: {role: db}}
      hosts:
        db-01: {ansible_host: 10.0.1.1}
        web-01: {}
"""
FILES = {
    "inventory/group_vars/web.yml": "mseg_tags: {role: web}\nmseg_mode: enforce\n",
    "inventory/group_vars/canary.yml": "mseg_mode: observe\n",
    "inventory/host_vars/db-01.yml": "mseg_addresses: [10.0.1.1, 10.0.9.1]\nmseg_tags: {zone: z1}\n",
    "playbooks/group_vars/db.yml": "mseg_management: []\n",
}


@pytest.fixture(name="inventory")
def fixture_inventory(tmp_path):
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "hosts.yml").write_text(INVENTORY)
    for path, text in FILES.items():
        os.makedirs(str((tmp_path / path).parent), exist_ok=True)
        (tmp_path / path).write_text(text)
    loader = DataLoader()
    loader.set_basedir(str(tmp_path / "playbooks"))
    inventory = InventoryManager(loader=loader, sources=[str(tmp_path / "inventory" / "hosts.yml")])
    manager = VariableManager(loader=loader, inventory=inventory)
    hostvars = HostVars(inventory=inventory, variable_manager=manager, loader=loader)
    task_vars = {"hostvars": hostvars, "groups": {"all": sorted(h.name for h in inventory.get_hosts())}}
    return task_vars, manager, Templar(loader=loader, variables={})


def through_hostvars(task_vars):
    """What every host's variables are through hostvars[name], the way the compile read them before."""
    found = {}
    for name in task_vars["groups"]["all"]:
        variables = task_vars["hostvars"][name]
        found[name] = {key: variables.get(var) for key, var in HOST_VARIABLES.items()}
        found[name]["groups"] = list(variables.get("group_names"))
    return found


def gathered(task_vars, templar):
    fleet, problems = gather_fleet(task_vars, templar)
    assert problems == []
    return {name: {key: value for key, value in raw.items() if key != "tags"} for name, raw in fleet.items()}


def test_every_variable_is_what_hostvars_gives(inventory):
    task_vars, manager, templar = inventory
    manager.set_nonpersistent_facts("web-02", {"mseg_mode": "enforce"})
    expected = through_hostvars(task_vars)
    assert expected["web-04"]["mode"] == "observe"  # the child group wins over its parent
    assert expected["web-04"]["groups"] == ["canary", "web"]
    assert expected["web-02"]["mode"] == "enforce"  # set_fact wins over the inventory
    assert expected["web-03"]["addresses"] == ["10.0.0.3", "fd00::3"]  # templated with the host's own variables
    assert expected["db-01"]["management"] == []  # group_vars beside the playbook
    assert gathered(task_vars, templar) == expected


def test_extra_vars_win_for_every_host(inventory):
    task_vars, manager, templar = inventory
    manager._extra_vars = {"mseg_mode": "bypass"}
    expected = through_hostvars(task_vars)
    assert {host["mode"] for host in expected.values()} == {"bypass"}
    assert gathered(task_vars, templar) == expected


def test_tags_are_united_across_groups(inventory):
    task_vars, _manager, templar = inventory
    fleet, _problems = gather_fleet(task_vars, templar)
    assert fleet["web-01"]["tags"] == {"role": frozenset(["db", "web"]), "env": frozenset(["prod"])}
    assert fleet["db-01"]["tags"] == {"role": frozenset(["db"]), "zone": frozenset(["z1"])}


def test_only_a_templated_host_is_read_through_get_vars(inventory, monkeypatch):
    task_vars, manager, templar = inventory
    read = []
    real = manager.get_vars

    def counting(*args, **kwargs):
        read.append(kwargs.get("host").name)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager, "get_vars", counting)
    gather_fleet(task_vars, templar)
    assert read == ["web-03"]
