# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the fleet from the inventory, on the controller, for the compile and trace action plugins.

Ansible merges a dict variable defined by several groups as "last group wins". DESIGN section 3 wants the union of
the groups' ``mseg_tags`` (and the host's own tags winning per label), so tags are read layer by layer from the
inventory objects; every other variable is read with Ansible's normal precedence, as ``hostvars`` would give it
(see _Inventory for how that stays cheap at 10,000 hosts).
"""

from __future__ import annotations

import os

import yaml
from ansible import constants as C
from ansible.inventory.helpers import get_group_vars, sort_groups
from ansible.utils.vars import combine_vars
from ansible.vars.plugins import get_vars_from_inventory_sources, get_vars_from_path
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import merge_tags
from ansible_collections.mseg.fleet.plugins.module_utils.compile.system import DECLARED, role_settings

_ROLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "roles")

HOST_VARIABLES = {
    "addresses": "mseg_addresses",
    "ansible_host": "ansible_host",
    "mode": "mseg_mode",
    "management": "mseg_management",
}


_VARIABLES = tuple(HOST_VARIABLES.values())
# Where VariableManager.get_vars takes a host's group-level variables from, by the names of C.VARIABLE_PRECEDENCE.
_GROUP_STAGES = ("all_inventory", "groups_inventory", "all_plugins_inventory", "all_plugins_play",
                 "groups_plugins_inventory", "groups_plugins_play")
_TEMPLATE_MARKS = ("{{", "{%", "{#")


def _plain(value):
    """True when ``value`` is plain data without a template in it: templating it would return it unchanged."""
    if isinstance(value, dict):
        return all(_plain(key) and _plain(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if isinstance(value, str):
        return not any(mark in value for mark in _TEMPLATE_MARKS)
    return value is None or isinstance(value, (bool, int, float))


class _Inventory(object):
    """The inventory variables the compile needs, read from Ansible's inventory objects, without computing every
    variable of every host.

    ``hostvars[name]`` runs the whole of VariableManager.get_vars for the host (every group's vars plugins again,
    the facts cleaned, the magic variables): about a millisecond a host, most of a 10,000-host compile. Here the
    group-level variables are merged once per distinct set of groups, in VariableManager's order and with its
    combine_vars (so hash_behaviour holds), and each host adds only its own layers: inventory vars, vars plugins
    (one lookup, also the host's own ``mseg_tags`` layer), include_vars, set_fact and extra vars. A host whose
    value is not plain data (a template, a vault value) or whose facts name one of the variables is read through
    ``hostvars`` as before, so every answer is the one hostvars would give.

    ``mseg_tags`` are read layer by layer (Ansible merges a dict defined by several groups as "last group wins"):
    the inventory itself, group_vars/host_vars beside the inventory, then beside the playbook.
    """

    def __init__(self, hostvars, templar):
        self._hostvars = hostvars
        self._inventory = getattr(hostvars, "_inventory", None)
        self._loader = getattr(hostvars, "_loader", None)
        self._manager = getattr(hostvars, "_variable_manager", None)
        self._templar = templar
        self._sources = list(getattr(self._inventory, "_sources", None) or [])
        basedir = self._loader.get_basedir() if self._loader is not None else None
        self._basedirs = [basedir] if basedir else []
        self._group_vars = {}
        self._group_tags = {}

    @property
    def usable(self):
        return self._inventory is not None and self._loader is not None

    @property
    def direct(self):
        """Whether variables can be read without hostvars: a variable manager, and the default precedence."""
        return (self.usable and self._manager is not None and self._manager.safe_basedir
                and tuple(C.VARIABLE_PRECEDENCE) == _GROUP_STAGES)

    def host(self, name):
        return self._inventory.get_host(name)

    def _inventory_plugins(self, entities):
        return get_vars_from_inventory_sources(self._loader, self._sources, entities, "task")

    def _play_plugins(self, entities):
        data = {}
        for basedir in self._basedirs:
            data = combine_vars(data, get_vars_from_path(self._loader, basedir, entities, "task"))
        return data

    def _stages(self, entity):
        """The variables defined on ``entity`` itself: inventory, vars plugins of the inventory, of the playbook."""
        stages = [entity.get_vars(), self._inventory_plugins([entity])]
        stages.extend(get_vars_from_path(self._loader, basedir, [entity], "task") for basedir in self._basedirs)
        return stages

    def _tags(self, stages):
        found = None
        for stage_vars in stages:
            if "mseg_tags" in stage_vars:
                found = stage_vars["mseg_tags"]
        return found if _plain(found) else self._templar.template(found)

    def group_tags(self, group):
        if group.name not in self._group_tags:
            self._group_tags[group.name] = self._tags(self._stages(group))
        return self._group_tags[group.name]

    def _groups_vars(self, groups):
        """VariableManager.get_vars's group-level variables of a host in ``groups`` (sorted, without all)."""
        key = tuple(group.name for group in groups)
        if key not in self._group_vars:
            everyone = [self._inventory.groups["all"]]
            stages = {
                "all_inventory": everyone[0].get_vars,
                "groups_inventory": lambda: get_group_vars(groups),
                "all_plugins_inventory": lambda: self._inventory_plugins(everyone),
                "all_plugins_play": lambda: self._play_plugins(everyone),
                "groups_plugins_inventory": lambda: self._inventory_plugins(groups),
                "groups_plugins_play": lambda: self._play_plugins(groups),
            }
            merged = {}
            for stage in C.VARIABLE_PRECEDENCE:
                merged = combine_vars(merged, stages[stage]())
            self._group_vars[key] = {var: merged[var] for var in _VARIABLES if var in merged}
        return self._group_vars[key]

    def read(self, name):
        """(the host's variables of HOST_VARIABLES and group_names, its own mseg_tags layer)."""
        host = self.host(name)
        if host is None or not self.direct:
            variables = self._hostvars[name]
            own = variables.get("mseg_tags") if host is None else self._tags(self._stages(host))
            return {var: variables.get(var) for var in _VARIABLES + ("group_names",)}, own
        groups = sort_groups([group for group in host.get_groups() if group.name != "all"])
        stages = self._stages(host)
        merged = dict(self._groups_vars(groups))
        for layer in stages + [self._manager._vars_cache.get(name, {}),
                               self._manager._nonpersistent_fact_cache.get(name, {}), self._manager.extra_vars]:
            merged = combine_vars(merged, {var: layer[var] for var in _VARIABLES if var in layer})
        try:
            facts = self._manager._fact_cache.get(name) or {}
        except KeyError:
            facts = {}
        values = {var: merged.get(var) for var in _VARIABLES}
        if any(var in facts for var in _VARIABLES) or not _plain(values):
            variables = self._hostvars[name]
            values = {var: variables.get(var) for var in _VARIABLES}
        values["group_names"] = sorted(group.name for group in groups)
        return values, self._tags(stages)


def gather_fleet(task_vars, templar):
    """Return ``({host: raw host data}, [problems])`` for every host of the inventory."""
    hostvars = task_vars["hostvars"]
    inventory = _Inventory(hostvars, templar)
    names = sorted(task_vars.get("groups", {}).get("all", []))
    fleet = {}
    problems = []
    for name in names:
        if inventory.usable:
            variables, own = inventory.read(name)
            host = inventory.host(name)
        else:
            variables, host = hostvars[name], None
            own = variables.get("mseg_tags")
        raw = {key: variables.get(var) for key, var in HOST_VARIABLES.items()}
        raw["groups"] = list(variables.get("group_names") or [])
        layers = []
        if host is not None:
            layers = [(group.name, inventory.group_tags(group)) for group in sort_groups(host.get_groups())]
        tags, tag_problems = merge_tags(layers, own, "host %s" % name)
        problems.extend(tag_problems)
        raw["tags"] = tags
        fleet[name] = raw
    return fleet, problems


def _role_defaults(role):
    with open(os.path.join(_ROLES, role, "defaults", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def gather_system(task_vars, templar):
    """What the inventory says of each role that declares system flows (compile/system.py): its hosts (members of
    the role's group) and its settings, read from the first of them with the role's defaults underneath, so that
    the port a system rule opens is the port the role configures."""
    hostvars = task_vars["hostvars"]
    groups = task_vars.get("groups", {})
    system = {}
    for role, (group, _variables, _flows, _limits) in sorted(DECLARED.items()):
        members = sorted(groups.get(group) or ())
        if not members:
            continue
        defaults = _role_defaults(role)
        variables = hostvars[members[0]]

        def lookup(name, variables=variables, defaults=defaults):
            value = variables.get(name, defaults.get(name))
            return templar.template(value) if isinstance(value, (str, list)) else value

        system[role] = {"hosts": members, "settings": role_settings(role, lookup)}
    return system
