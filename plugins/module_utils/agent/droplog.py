# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drop log: the ruleset's NFLOG records of drop, audit and log events as lines in the agent's runtime log.

The records come from the netfilter logger only (``agent.nflog``), never from kernel log lines: any local user can
put ``[MSEG-DROP] ...`` text into the kernel log, nobody but the ruleset can send an NFLOG record. Two kinds of
line, each written here and parsed back here (the observe report reads them from the hosts' runtime logs):

* an event: ``Policy Drop: ID=1024 src=10.0.1.5 dst=10.0.2.7 proto=tcp dport=5432 dir=ingress``;
* a heartbeat, when collecting starts and every ``HEARTBEAT`` seconds: ``drop log: collecting on web-01 from
  NFLOG groups 2710,2711,2712 (12 record(s), 0 malformed, 0 overrun(s))`` -- so a report tells "no events" from
  "nobody was collecting".
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.agent.nflog import NflogReader
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import Event

# Seconds between two heartbeats of a running collector.
HEARTBEAT = 300
_KIND_WORD = {"DROP": "Drop", "AUDIT": "Audit", "LOG": "Log"}
_WORD_KIND = {word: kind for kind, word in _KIND_WORD.items()}
_TIME = r"(?P<at>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)"
# The runtime log's lines as agent.log writes them: time, level, message (escaped onto one line).
EVENT_LINE_RE = re.compile(
    r"^%s INFO Policy (?P<word>Drop|Audit|Log): ID=(?P<id>[0-9]{1,5}) src=(?P<src>[0-9a-f.:]{2,39}) "
    r"dst=(?P<dst>[0-9a-f.:]{2,39}) proto=(?P<proto>[a-z0-9]{1,8})(?: dport=(?P<dport>[0-9]{1,5}))? "
    r"dir=(?P<direction>ingress|egress)$" % _TIME)
_HOST = r"[A-Za-z0-9_.-]{1,253}"
# A host name a heartbeat can carry (what the report reads back).
HEARTBEAT_HOST_RE = re.compile(r"^%s$" % _HOST)
HEARTBEAT_LINE_RE = re.compile(
    r"^%s INFO drop log: collecting on (?P<host>%s) from NFLOG groups [0-9,]+ " % (_TIME, _HOST))

Heartbeat = namedtuple("Heartbeat", "at host")


def droplog_line(event):
    """``Policy Drop: ID=1024 src=10.0.1.5 dst=10.0.2.7 proto=tcp dport=5432 dir=ingress``."""
    text = "Policy %s: ID=%d src=%s dst=%s proto=%s" % (
        _KIND_WORD[event.kind], event.rule, event.src, event.dst, event.proto)
    if event.dport is not None and event.proto != "icmp":
        text += " dport=%d" % event.dport
    return text + " dir=%s" % event.direction


def heartbeat_line(host, reader):
    return "drop log: collecting on %s from NFLOG groups %s (%d record(s), %d malformed, %d overrun(s))" % (
        host, ",".join(str(g) for g in reader.groups), reader.records, reader.malformed, reader.overruns)


def parse_runtime_line(line):
    """``(time text, Event)`` for an event line of a runtime log, ``(time text, Heartbeat)`` for a heartbeat, or
    None for any other line. Strict: the whole line must be one the drop log writes."""
    found = EVENT_LINE_RE.match(line)
    if found:
        rule = int(found.group("id"))
        try:
            src = ipaddress.ip_address(found.group("src")).compressed
            dst = ipaddress.ip_address(found.group("dst")).compressed
        except ValueError:
            return None
        dport = int(found.group("dport")) if found.group("dport") else None
        if rule > 65535 or (dport is not None and dport > 65535):
            return None
        return found.group("at"), Event(_WORD_KIND[found.group("word")], rule, found.group("direction"), src, dst,
                                        found.group("proto"), dport)
    found = HEARTBEAT_LINE_RE.match(line)
    if found:
        return found.group("at"), Heartbeat(found.group("at"), found.group("host"))
    return None


class DropLog(threading.Thread):
    """Reads the NFLOG groups of the wire contract and writes each event, and a heartbeat, to the runtime log."""

    def __init__(self, host, log, stop, reader=NflogReader, heartbeat=HEARTBEAT, clock=time.monotonic):
        super(DropLog, self).__init__(name="droplog")
        self.daemon = True
        self.host = host
        self.log = log
        self.stop = stop
        self.reader = reader
        self.heartbeat = heartbeat
        self.clock = clock

    def run(self):
        while not self.stop.is_set():
            try:
                with self.reader() as reader:
                    self._collect(reader)
            except (OSError, AgentError) as exc:
                self.log.warning("drop log: cannot read the NFLOG groups %s (%s); retrying in 5 s",
                                 ",".join(str(g) for g in contract.NFLOG_GROUP.values()), exc)
            self.stop.wait(5)

    def _collect(self, reader):
        self.log.info(heartbeat_line(self.host, reader))
        due = [self.clock() + self.heartbeat]

        def tick():
            if self.clock() >= due[0]:
                self.log.info(heartbeat_line(self.host, reader))
                due[0] = self.clock() + self.heartbeat

        for event in reader.events(self.stop, tick):
            self.log.info(droplog_line(event))
