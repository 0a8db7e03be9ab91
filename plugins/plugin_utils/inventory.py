# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the fleet from the inventory, on the controller, for the compile and trace action plugins.

Ansible merges a dict variable defined by several groups as "last group wins". DESIGN section 3 wants the union of
the groups' ``mseg_tags`` (and the host's own tags winning per label), so tags are read layer by layer from the
inventory objects; every other variable is read from ``hostvars`` with Ansible's normal precedence.
"""

from __future__ import annotations

import os

import yaml
from ansible.inventory.helpers import sort_groups
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


class _Layers(object):
    """``mseg_tags`` defined directly on one inventory entity (a group or a host), in Ansible's order: the
    inventory itself, group_vars/host_vars beside the inventory, then beside the playbook."""

    def __init__(self, hostvars, templar):
        self._inventory = getattr(hostvars, "_inventory", None)
        self._loader = getattr(hostvars, "_loader", None)
        self._templar = templar
        self._sources = list(getattr(self._inventory, "_sources", None) or [])
        basedir = self._loader.get_basedir() if self._loader is not None else None
        self._basedirs = [basedir] if basedir else []

    @property
    def usable(self):
        return self._inventory is not None and self._loader is not None

    def host(self, name):
        return self._inventory.get_host(name)

    def tags(self, entity):
        found = entity.get_vars().get("mseg_tags")
        for stage_vars in self._plugin_vars(entity):
            if "mseg_tags" in stage_vars:
                found = stage_vars["mseg_tags"]
        return self._templar.template(found) if found is not None else None

    def _plugin_vars(self, entity):
        yield get_vars_from_inventory_sources(self._loader, self._sources, [entity], "task")
        for basedir in self._basedirs:
            yield get_vars_from_path(self._loader, basedir, [entity], "task")


def gather_fleet(task_vars, templar):
    """Return ``({host: raw host data}, [problems])`` for every host of the inventory."""
    hostvars = task_vars["hostvars"]
    layers_of = _Layers(hostvars, templar)
    names = sorted(task_vars.get("groups", {}).get("all", []))
    group_layers = {}
    fleet = {}
    problems = []
    for name in names:
        variables = hostvars[name]
        raw = {key: variables.get(var) for key, var in HOST_VARIABLES.items()}
        raw["groups"] = list(variables.get("group_names") or [])
        host = layers_of.host(name) if layers_of.usable else None
        if host is None:
            layers, own = [], variables.get("mseg_tags")
        else:
            layers = []
            for group in sort_groups(host.get_groups()):
                if group.name not in group_layers:
                    group_layers[group.name] = layers_of.tags(group)
                layers.append((group.name, group_layers[group.name]))
            own = layers_of.tags(host)
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
