# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's error and the words its log uses for a refused bundle."""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError

REFUSED_WORD = {"signature": "signature mismatch", "fleet": "names another fleet", "host": "names another host",
                "replay": "replay or rollback", "bounds": "out of bounds (serial jump or validity too long)",
                "expired": "expired", "not_yet_valid": "not yet valid", "format": "malformed"}


class AgentError(MsegError):
    """A failure with one message that says what, where and how to fix it."""
