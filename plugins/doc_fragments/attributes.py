# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """Attributes of the modules that run on a Linux machine (a managed host, a controller, the control node).

    Every such module supports check mode: it extends ``mseg.fleet.attributes``, then ``mseg.fleet.attributes.diff``
    or ``mseg.fleet.attributes.no_diff`` (and ``mseg.fleet.attributes.facts`` if it returns facts). Its own
    ``attributes`` only describe what is particular to it. The modules that work on the controller without a host
    extend ``mseg.fleet.controller_side`` instead.
    """

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: Reports what would change, without changing anything.
  platform:
    support: full
    platforms: posix
    description: Linux hosts.
"""

    DIFF = r"""
attributes:
  diff_mode:
    support: full
    description: Shows what changes, before and after.
"""

    NO_DIFF = r"""
attributes:
  diff_mode:
    support: none
    description: Nothing to compare.
"""

    FACTS = r"""
attributes:
  facts:
    support: full
    description: Returns an C(ansible_facts) dictionary that updates the host's facts.
"""
