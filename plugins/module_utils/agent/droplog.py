# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drop log: the kernel's ``[MSEG-DROP|AUDIT|LOG]`` lines as structured lines in the agent's runtime log."""

from __future__ import annotations

import errno
import os
import subprocess
import threading

from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import parse_line

_KIND_WORD = {"DROP": "Drop", "AUDIT": "Audit", "LOG": "Log"}


def droplog_line(event):
    """``Policy Drop: ID=1024 src=10.0.1.5 dst=10.0.2.7 proto=tcp dport=5432 dir=ingress``."""
    text = "Policy %s: ID=%d src=%s dst=%s proto=%s" % (
        _KIND_WORD[event.kind], event.rule, event.src, event.dst, event.proto)
    if event.dport is not None and event.proto != "icmp":
        text += " dport=%d" % event.dport
    return text + " dir=%s" % event.direction


def droplog_lines(lines):
    """The structured lines for the mseg lines among ``lines`` (other kernel messages are skipped)."""
    for line in lines:
        event = parse_line(line)
        if event is not None:
            yield droplog_line(event)


def kmsg_lines(path="/dev/kmsg"):
    """Follow the kernel ring buffer from now on; each read of /dev/kmsg returns one record."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        while True:
            try:
                record = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it: continue with the next
                    continue
                raise
            if not record:
                return
            yield kmsg_message(record)
    finally:
        os.close(fd)


def kmsg_message(record):
    """The message of one /dev/kmsg record ``prio,seq,usec,flags;message\n[ KEY=value continuation lines]``."""
    return record.decode("utf-8", "replace").split(";", 1)[-1].split("\n", 1)[0]


def journal_lines():
    """Follow the kernel messages journald keeps (the agent user is in group systemd-journal)."""
    proc = subprocess.Popen(["journalctl", "--dmesg", "--follow", "--lines=0", "--output=cat"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            yield line.rstrip("\n")
    finally:
        proc.kill()
        proc.wait()


class DropLog(threading.Thread):
    """Turns the kernel's [MSEG-DROP|AUDIT|LOG] lines into structured lines in runtime.log."""

    SOURCES = {"journal": journal_lines, "kmsg": kmsg_lines}

    def __init__(self, source, log, stop):
        super(DropLog, self).__init__(name="droplog")
        self.daemon = True
        self.source = source
        self.log = log
        self.stop = stop

    def run(self):
        while not self.stop.is_set():
            try:
                for line in droplog_lines(self.SOURCES[self.source]()):
                    self.log.info(line)
                    if self.stop.is_set():
                        return
                self.log.warning("drop log: the %s reader ended; restarting it in 5 s", self.source)
            except (OSError, ValueError) as exc:
                self.log.warning("drop log: cannot read kernel messages from %s (%s); retrying in 5 s",
                                 self.source, exc)
            self.stop.wait(5)
