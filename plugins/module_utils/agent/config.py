# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's configuration (``/etc/mseg/agent.json``, handed over as a systemd credential), validated in full."""

from __future__ import annotations

import ipaddress
import json
import os
from urllib.parse import urlsplit

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract

DEFAULT_CONFIG = os.path.join(contract.STATE_DIR, contract.AGENT_CONFIG_FILE)
DEFAULT_STATE_DIR = "/var/lib/mseg-agent"
DEFAULT_LOG_FILE = contract.AGENT_RUNTIME_LOG
DEFAULT_PORT = 8443
DEFAULT_PATH = "/v1/bundle"
DROPLOG_SOURCES = ("nflog", "none")
DEFAULT_MAX_BODY = 16 * 1024 * 1024  # the largest response the agent reads from a controller


def parse_controller(text):
    """``host``, ``host:port``, ``[v6]:port`` or ``https://host:port/path`` -> (host, port, path)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a controller must be a non-empty string")
    value = text.strip()
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if parts.scheme != "https":
        raise ValueError("controller %r: only https is allowed (bundles are fetched over mutual TLS)" % text)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("controller %r has an invalid port" % text)
    if not parts.hostname:
        raise ValueError("controller %r has no host" % text)
    return parts.hostname, port, parts.path or DEFAULT_PATH


def parse_peer(item):
    """A management peer ``"192.0.2.10 22"`` or ``{"address": ..., "port": ...}`` -> (address, port)."""
    if isinstance(item, dict):
        address, port = item.get("address"), item.get("port", 22)
    elif isinstance(item, str) and len(item.split()) == 2:
        address, port = item.split()
    else:
        raise ValueError("management peer %r must be 'ADDRESS PORT' or {address, port}" % (item,))
    try:
        address = str(ipaddress.ip_address(str(address)))
        port = int(port)
    except ValueError:
        raise ValueError("management peer %r: not an IP address and a port" % (item,))
    if not 0 < port < 65536:
        raise ValueError("management peer %r: port out of range" % (item,))
    return address, port


class Config:
    """The agent's configuration (JSON written by the ``agent`` role), validated in full before use."""

    REQUIRED = ("host", "controllers", "public_key", "tls_cert", "tls_key", "tls_ca")
    DEFAULTS = {"interval": 2.0, "jitter": 0.2, "timeout": 3.0, "state_dir": DEFAULT_STATE_DIR,
                "log_file": DEFAULT_LOG_FILE, "management_peers": [], "droplog": "nflog",
                "max_body": DEFAULT_MAX_BODY, "tls_crl": "", "fleet": contract.DEFAULT_FLEET}

    def __init__(self, data, where="the agent configuration", credentials=None):
        problems = []
        if not isinstance(data, dict):
            raise AgentError("%s is not a JSON object: rewrite it with the mseg.fleet.agent role" % where)
        unknown = sorted(set(data) - set(self.REQUIRED) - set(self.DEFAULTS))
        if unknown:
            problems.append("unknown key(s) %s" % ", ".join(unknown))
        missing = [key for key in self.REQUIRED if not data.get(key)]
        if missing:
            problems.append("missing %s" % ", ".join(missing))
        values = dict(self.DEFAULTS)
        values.update(data)
        self.host = values.get("host")
        self.controllers = []
        for item in values.get("controllers") or []:
            try:
                self.controllers.append(parse_controller(item))
            except ValueError as exc:
                problems.append(str(exc))
        if not isinstance(values.get("controllers") or [], list):
            problems.append("controllers must be a list")
        numbers = {}
        for key, low in (("interval", 0.1), ("jitter", 0.0), ("timeout", 0.1)):
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                problems.append("%s must be a number >= %s, got %r" % (key, low, value))
            numbers[key] = value
        if isinstance(numbers["jitter"], (int, float)) and numbers["jitter"] >= 1:
            problems.append("jitter is a fraction of the interval and must be below 1, got %r" % numbers["jitter"])
        self.interval, self.jitter, self.timeout = numbers["interval"], numbers["jitter"], numbers["timeout"]
        self.max_body = values["max_body"]
        if isinstance(self.max_body, bool) or not isinstance(self.max_body, int) or self.max_body < 1024:
            problems.append("max_body is the largest response in bytes and must be an integer >= 1024, got %r"
                            % (self.max_body,))
        self.peers = []
        for item in values.get("management_peers") or []:
            try:
                self.peers.append(parse_peer(item))
            except ValueError as exc:
                problems.append(str(exc))
        if values["droplog"] in ("journal", "kmsg"):
            problems.append("droplog %r is gone: the drop log reads the ruleset's NFLOG records (nflog), since any "
                            "local user can forge kernel log lines; set agent_droplog to nflog" % values["droplog"])
        elif values["droplog"] not in DROPLOG_SOURCES:
            problems.append("droplog must be one of %s, got %r" % (", ".join(DROPLOG_SOURCES), values["droplog"]))
        self.droplog = values["droplog"]
        if values["tls_crl"] is not None and not isinstance(values["tls_crl"], str):
            problems.append("tls_crl must be the path of the CA's CRL (PEM) or empty, got %r" % (values["tls_crl"],))
        if not isinstance(values["fleet"], str) or not contract.FLEET_RE.match(values["fleet"]):
            problems.append("fleet must be a fleet name (lower-case letters, digits, '-'), got %r" % (values["fleet"],))
        self.fleet = values["fleet"]
        self.state_dir = values["state_dir"]
        self.log_file = values["log_file"]
        self.credentials = credentials
        self.files = {key: values.get(key) for key in ("public_key", "tls_cert", "tls_key", "tls_ca", "tls_crl")}
        if problems:
            raise AgentError("%s: %s; fix it (the mseg.fleet.agent role writes it from agent_* variables)"
                             % (where, "; ".join(problems)))

    @classmethod
    def load(cls, path=None):
        """Read the configuration: the systemd credential ``agent.json`` when present, else ``path``."""
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if path is None:
            cred = os.path.join(credentials, "agent.json") if credentials else None
            path = cred if cred and os.path.exists(cred) else DEFAULT_CONFIG
        try:
            with open(path) as handle:
                data = json.load(handle)
        except OSError as exc:
            raise AgentError("cannot read the agent configuration %s (%s): run the mseg.fleet.agent role"
                             % (path, exc.strerror or exc))
        except ValueError as exc:
            raise AgentError("the agent configuration %s is not valid JSON (%s): run the mseg.fleet.agent role"
                             % (path, exc))
        return cls(data, path, credentials)

    def file(self, key):
        """Path of a key/certificate file: its systemd credential (same base name) when there is one."""
        path = self.files[key]
        if self.credentials:
            cred = os.path.join(self.credentials, os.path.basename(path))
            if os.path.exists(cred):
                return cred
        return path

    def read(self, key):
        try:
            with open(self.file(key), "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise AgentError("cannot read %s %s (%s): run the mseg.fleet.agent role (it installs the file and "
                             "mseg-agent.service)"
                             % (key, self.file(key), exc.strerror or exc))
