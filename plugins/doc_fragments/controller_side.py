# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """Attributes shared by the modules that compile the fleet on the controller and never touch a host."""

    DOCUMENTATION = r"""
attributes:
  diff_mode:
    support: none
    description: Nothing on a host changes, so there is nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller only; it never connects to a host.
"""
