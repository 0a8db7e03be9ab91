# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host closure as the agent role installs it, one line per file in the form ``sha256sum`` prints.

The agent role compares these lines with ``sha256sum``'s over what a host has, and copies only the files that
differ: one remote command per host and run instead of one remote stat per file (a directory ``copy`` costs a round
trip per file on every run, which on push-mode hosts is every policy run).
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: host_code
short_description: The files of the collection's host packages, with their SHA-256, as C(sha256sum) prints them
version_added: 0.3.0
description:
  - Lists every file of the named packages of the collection's C(plugins/module_utils) on the control node, without
    C(__pycache__) directories and C(.pyc) files, as C(<sha256>  ./<package>/<path>) lines sorted by path.
  - The same lines as C(find . -name __pycache__ -prune -o -type f ! -name '*.pyc' -print0 | sort -z |
    xargs -0r sha256sum) prints run in a host's copy of C(module_utils), so that the two lists can be compared.
  - Used by the C(mseg.fleet.agent) role to install the host closure (its C(__agent_packages)).
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  _terms:
    description: Names of packages under C(plugins/module_utils), such as C(common) or C(agent).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Show what the agent role would install
  ansible.builtin.debug:
    msg: "{{ query('mseg.fleet.host_code', 'common', 'nft', 'apply', 'bundle', 'agent') }}"
"""

RETURN = r"""
_raw:
  description: One C(<sha256>  ./<package>/<path>) line per file, sorted by path.
  type: list
  elements: str
"""

import hashlib
import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")


def package_lines(root, packages):
    """The ``sha256sum`` lines of every file of ``packages`` under ``root``, sorted by path."""
    lines = []
    for package in packages:
        top = os.path.join(root, package)
        if not package or os.sep in package or package.startswith(".") or not os.path.isdir(top):
            raise AnsibleLookupError("host_code: %r is not a package of plugins/module_utils (%s); use one of: %s" % (
                package, root, ", ".join(sorted(name for name in os.listdir(root) if not name.startswith(("_", "."))))))
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = [name for name in subdirs if name != "__pycache__"]
            for name in files:
                if name.endswith(".pyc"):
                    continue
                path = os.path.join(directory, name)
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                lines.append((os.path.relpath(path, root), digest))
    return ["%s  ./%s" % (digest, path) for path, digest in sorted(lines)]


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return package_lines(MODULE_UTILS, [str(term) for term in terms])
