# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The apply engine's error."""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError


class ApplyError(MsegError):
    """A failed apply; the message says what, where and how to fix it (and whether anything changed)."""
