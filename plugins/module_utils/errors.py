# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors the engine raises for input a user can fix."""

from __future__ import annotations


class MsegError(Exception):
    """One or more problems in user input, each a complete sentence: what, where, how to fix.

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
