# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's runtime log (``/var/log/mseg-agent/runtime.log``), shared by the service and the CLI.

Every record is one line: whatever a message carries (a controller's error text, a kernel record's prefix, a
name from a state file) goes through ``common.files.printable``, so untrusted text can neither start a line of its
own nor drive the terminal of whoever reads the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import time

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import printable

LOGGER = "mseg-agent"


class OneLineFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(message)s`` in UTC, the message escaped onto one line."""

    def __init__(self):
        super(OneLineFormatter, self).__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime

    def formatMessage(self, record):
        record.message = printable(record.message)
        return super(OneLineFormatter, self).formatMessage(record)


def make_logger(path, stream=None):
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    log.handlers = []
    formatter = OneLineFormatter()
    if path:
        try:
            handler = logging.handlers.WatchedFileHandler(path)  # logrotate moves the file; we reopen it
        except OSError as exc:
            raise AgentError("cannot open the runtime log %s (%s): LogsDirectory= in mseg-agent.service creates "
                             "its directory" % (path, exc.strerror or exc))
        handler.setFormatter(formatter)
        log.addHandler(handler)
    if stream is not None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return log
