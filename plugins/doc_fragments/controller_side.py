# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """The modules that compile the fleet on the controller and never touch a host (their action plugins are
    ``plugin_utils.action.FleetAction``s): the policy they compile and the attributes they share."""

    DOCUMENTATION = r"""
options:
  policy:
    description:
      - The policy document (see C(docs/policy.md)). Defaults to the C(mseg_policy) variable of the host the task
        runs for.
    type: raw
attributes:
  check_mode:
    support: full
    description: Reports what would be written, without writing it.
  diff_mode:
    support: none
    description: Nothing on a host changes, so there is nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller only; it never connects to a host.
"""
