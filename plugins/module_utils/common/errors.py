# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error base of the engine: every failure a user can act on is an ``MsegError``.

Each domain raises its own subclass (``ApplyError``, ``AgentError``, ``BundleError`` …) so callers can tell them
apart, and any caller that only needs "a problem with one clear message" catches ``MsegError``.
"""

from __future__ import annotations


class MsegError(Exception):
    """One or more problems, each a complete sentence: what, where, how to fix.

    The engine collects every problem it can find before raising, so a user fixes a policy in one pass.
    """

    def __init__(self, messages):
        if isinstance(messages, str):
            messages = [messages]
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))

    def __str__(self):
        if len(self.messages) == 1:
            return self.messages[0]
        return "%d problems:\n%s" % (len(self.messages), "\n".join("  - " + m for m in self.messages))
