# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's runtime log (``/var/log/mseg-agent/runtime.log``), shared by the service and the CLI."""

from __future__ import annotations

import logging
import logging.handlers
import time

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError

LOGGER = "mseg-agent"


def make_logger(path, stream=None):
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    log.handlers = []
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
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
