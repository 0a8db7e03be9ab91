# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit records of one discovery window, read on the host from the drop log's runtime logs.

In observe mode the ruleset logs every new connection that enforce would drop as an NFLOG record, and the drop log
(``agent.droplog``) writes it to the runtime log as ``Policy Audit: ...``. Those lines are the trusted record
channel (never the kernel log, which any local user can write to). Discovery reads the ones logged inside its
window, judged by the drop log's own strict parser, and the control node judges them again
(``compile.discover.audit``). Cost: one pass over the runtime logs; at most ``limit`` lines are returned.
"""

from __future__ import annotations

import time

from ansible_collections.mseg.fleet.plugins.module_utils.agent.droplog import parse_runtime_line
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import Event

# The most audit lines one host returns for a window; more are counted, not returned.
MAX_LINES = 200000
_TIME_WIDTH = len("2026-01-01T00:00:00Z")


def window_time(epoch):
    """The runtime log's time text (UTC, to the second) of an epoch time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def window_lines(start, end, paths=None, limit=MAX_LINES):
    """``(lines, overflow, unreadable)``: the audit event lines the drop log wrote from ``start`` to ``end`` (epoch
    seconds, both ends included to the second), at most ``limit`` of them (``overflow`` counts the rest), and the
    logs that could not be read other than for not existing (a host has the agent's log or mseg-droplog's).
    ``paths`` defaults to the wire contract's RUNTIME_LOGS."""
    paths = contract.RUNTIME_LOGS if paths is None else paths
    first, last = window_time(start), window_time(end)
    found = []
    overflow = 0
    unreadable = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if not first <= line[:_TIME_WIDTH] <= last:
                        continue
                    line = line.rstrip("\n")
                    parsed = parse_runtime_line(line)
                    if parsed is None or not isinstance(parsed[1], Event) or parsed[1].kind != "AUDIT":
                        continue
                    if len(found) < limit:
                        found.append(line)
                    else:
                        overflow += 1
        except FileNotFoundError:
            continue
        except (IOError, OSError) as exc:
            unreadable.append("%s: %s" % (path, exc.strerror or exc))
    return found, overflow, unreadable
