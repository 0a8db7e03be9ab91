# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-host agent: pull signed bundles, apply them atomically, restore them at boot, obey local overrides.

Plain Python (no Ansible imports), installed on the host by the ``agent`` role under ``/usr/lib/mseg-agent``
with this package path preserved, so it reuses the collection's engines unchanged: ``bundle.verify`` (the one
verification path), ``apply.Engine`` (the same atomic, idempotent apply ``nft_apply`` uses), ``audit.parse_line``
(kernel log lines) and ``render.bypass_ruleset``.

Privileges: the agent runs as its own user with only ``CAP_NET_ADMIN``. ``/etc/mseg`` stays root's (0700, the pki
role keeps it so); systemd hands the agent its configuration, TLS key, certificate, CA and the bundle signing key
through ``LoadCredential=``. What the agent writes lives in its state directory (``StateDirectory=``, 0700, files
0600)::

    current.json    the last good envelope (verified, applied unless an override holds it back)
    previous.json   the good envelope before it (``mseg rollback``)
    meta.json       serial (the highest ever accepted: replay and rollback protection), etag, bundle fields
    override.json   a local override (``mseg mode bypass``, ``mseg rollback``) that survives restarts
    status.json     what ``mseg status`` shows: mode, serial, policy digest, last poll, last apply, last error
    identity.json   host name, management peers and the public key, so the CLI works without the credentials
    nft/            the apply engine's state directory (recorded listing, backup, lock)
    agent.lock      serialises the agent and the CLI
"""

from __future__ import absolute_import, division, print_function

import argparse
import contextlib
import errno
import fcntl
import http.client
import ipaddress
import json
import logging
import logging.handlers
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from ansible_collections.mseg.fleet.plugins.module_utils import apply as engine
from ansible_collections.mseg.fleet.plugins.module_utils import audit
from ansible_collections.mseg.fleet.plugins.module_utils import bundle as bundles
from ansible_collections.mseg.fleet.plugins.module_utils import render

__metaclass__ = type

DEFAULT_CONFIG = "/etc/mseg/agent.json"
DEFAULT_STATE_DIR = "/var/lib/mseg-agent"
DEFAULT_LOG_FILE = "/var/log/mseg-agent/runtime.log"
DEFAULT_PORT = 8443
DEFAULT_PATH = "/v1/bundle"
DROPLOG_SOURCES = ("journal", "kmsg", "none")
LOGGER = "mseg-agent"
_KIND_WORD = {"DROP": "Drop", "AUDIT": "Audit", "LOG": "Log"}
_REFUSED_WORD = {"signature": "signature mismatch", "host": "names another host", "replay": "replay or rollback",
                 "expired": "expired", "not_yet_valid": "not yet valid", "format": "malformed"}


class AgentError(Exception):
    """A failure with one message that says what, where and how to fix it."""


def utcnow_text(now=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


# --------------------------------------------------------------------------- configuration


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
                "log_file": DEFAULT_LOG_FILE, "management_peers": [], "droplog": "journal"}

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
        self.peers = []
        for item in values.get("management_peers") or []:
            try:
                self.peers.append(parse_peer(item))
            except ValueError as exc:
                problems.append(str(exc))
        if values["droplog"] not in DROPLOG_SOURCES:
            problems.append("droplog must be one of %s, got %r" % (", ".join(DROPLOG_SOURCES), values["droplog"]))
        self.droplog = values["droplog"]
        self.state_dir = values["state_dir"]
        self.log_file = values["log_file"]
        self.credentials = credentials
        self.files = {key: values.get(key) for key in ("public_key", "tls_cert", "tls_key", "tls_ca")}
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
            raise AgentError("cannot read %s %s (%s): check LoadCredential= in mseg-agent.service and the file"
                             % (key, self.file(key), exc.strerror or exc))


# --------------------------------------------------------------------------- state directory


class State:
    """The agent's own files (see the module docstring). Every write is atomic (``apply.write_atomic``)."""

    def __init__(self, directory):
        self.dir = directory
        self.nft_dir = os.path.join(directory, "nft")

    def path(self, name):
        return os.path.join(self.dir, name)

    def ensure(self):
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            os.makedirs(self.nft_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise AgentError("cannot create the agent state directory %s (%s): it must be writable by the agent "
                             "user (StateDirectory= in mseg-agent.service)" % (self.dir, exc.strerror or exc))

    def read_bytes(self, name):
        try:
            with open(self.path(name), "rb") as handle:
                return handle.read()
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise AgentError("cannot read %s (%s)" % (self.path(name), exc.strerror or exc))

    def read_json(self, name, default=None):
        raw = self.read_bytes(name)
        if raw is None:
            return default
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            return default

    def write(self, name, data):
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        engine.write_atomic(self.path(name), text)

    def write_json(self, name, data):
        self.write(name, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def remove(self, name):
        try:
            os.unlink(self.path(name))
            return True
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return False

    @contextlib.contextmanager
    def locked(self, timeout=60):
        """Exclusive lock shared by the agent and the CLI, so an override and a bundle never interleave."""
        fd = os.open(self.path("agent.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise AgentError("the agent state %s is locked by another mseg process for more than %ss; "
                                         "try again" % (self.dir, timeout))
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- fetching


def tls_context(config):
    """Client context: TLS 1.3 only, the fleet CA only, our certificate for mutual TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cafile=config.file("tls_ca"))
        context.load_cert_chain(config.file("tls_cert"), config.file("tls_key"))
    except (OSError, ssl.SSLError) as exc:
        raise AgentError("cannot load the agent's TLS files (%s): run the mseg.fleet.pki role with the agent "
                         "profile, then the mseg.fleet.agent role" % exc)
    return context


class Fetcher:
    """GET the bundle over one kept-alive HTTPS connection per controller (a TLS handshake per connection, not per
    poll). A reused connection the server has closed is retried once on a fresh one; any other failure raises
    OSError, so the caller fails over to the next controller."""

    HEADERS = {"User-Agent": "mseg-agent", "Accept": "application/json"}

    def __init__(self, context, timeout):
        self.context = context
        self.timeout = timeout
        self.connections = {}

    def _drop(self, controller):
        conn = self.connections.pop(controller, None)
        if conn is not None:
            conn.close()

    def __call__(self, controller, etag):
        headers = dict(self.HEADERS)
        if etag:
            headers["If-None-Match"] = etag
        retried = False
        while True:
            reused = controller in self.connections
            if not reused:
                host, port, _path = controller
                self.connections[controller] = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                                           context=self.context)
            conn = self.connections[controller]
            try:
                conn.request("GET", controller[2], headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                self._drop(controller)
                if reused and not retried:
                    retried = True
                    continue
                raise OSError(str(exc) or exc.__class__.__name__)
            if response.will_close:
                self._drop(controller)
            return response.status, body, response.getheader("ETag")


def controller_url(controller):
    host, port, path = controller
    return "https://%s:%d%s" % ("[%s]" % host if ":" in host else host, port, path)


# --------------------------------------------------------------------------- drop log


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
        event = audit.parse_line(line)
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


# --------------------------------------------------------------------------- systemd


def sd_notify(text):
    """Tell systemd (Type=notify) that we are ready; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(address)
        sock.sendall(text.encode("utf-8"))
    except OSError:
        pass  # systemd went away; nothing to tell
    finally:
        sock.close()


# --------------------------------------------------------------------------- the agent


def bundle_fields(item):
    return {"serial": item.serial, "mode": item.mode, "policy_digest": item.policy_digest,
            "ruleset_sha256": item.ruleset_sha256, "created_at": item.created_at, "valid_until": item.valid_until,
            "host": item.host}


class Agent:
    """Polls, verifies, applies. ``fetcher``, ``applier`` and ``clock`` are replaceable in unit tests."""

    def __init__(self, host, state_dir, public_key, log, peers=(), controllers=(), interval=2.0, jitter=0.2,
                 fetcher=None, applier=None, clock=time.time):
        self.host = host
        self.state = State(state_dir)
        self.public_key = public_key
        self.log = log
        self.peers = list(peers)
        self.controllers = list(controllers)
        self.interval = interval
        self.jitter = jitter
        self.fetcher = fetcher
        self.applier = applier or self._apply_engine
        self.clock = clock
        self.preferred = 0
        self._last_problem = None
        self._refused = {}  # controller index -> ETag of the bundle refused from it (None: it sent none)
        self._refusal = None  # why the last bundle was refused

    @classmethod
    def from_config(cls, config, log, with_tls=True):
        context = tls_context(config) if with_tls else None
        agent = cls(config.host, config.state_dir, config.read("public_key"), log, config.peers,
                    config.controllers, config.interval, config.jitter,
                    fetcher=Fetcher(context, config.timeout) if with_tls else None)
        return agent

    @classmethod
    def from_identity(cls, state_dir, log):
        """The CLI's agent: host, peers and public key from what the running agent recorded."""
        state = State(state_dir)
        identity = state.read_json("identity.json")
        if not identity:
            raise AgentError("%s has no identity.json: the agent has never started on this host; start it with "
                             "'systemctl start mseg-agent'" % state_dir)
        return cls(identity["host"], state_dir, identity["public_key"].encode("ascii"), log,
                   [tuple(p) for p in identity.get("peers", [])])

    # -- files -----------------------------------------------------------------

    def record_identity(self):
        self.state.ensure()
        identity = {"host": self.host, "peers": [list(p) for p in self.peers],
                    "public_key": self.public_key.decode("ascii"),
                    "controllers": [controller_url(c) for c in self.controllers]}
        if self.state.read_json("identity.json") != identity:
            self.state.write_json("identity.json", identity)

    def meta(self):
        return self.state.read_json("meta.json", {}) or {}

    def update_status(self, **changes):
        status = self.state.read_json("status.json", {}) or {}
        status.update(changes)
        meta = self.meta()
        override = self.state.read_json("override.json")
        status.update(host=self.host, serial=meta.get("serial"), bundle=meta.get("bundle"), override=override,
                      mode=self.effective_mode(meta, override), updated_at=utcnow_text(self.clock()))
        self.state.write_json("status.json", status)
        return status

    @staticmethod
    def effective_mode(meta, override):
        if override and override.get("kind") == "bypass":
            return "bypass"
        if override and override.get("kind") == "mode":
            return override.get("mode")
        if override and override.get("kind") == "rollback":
            return (override.get("bundle") or {}).get("mode")
        return (meta.get("bundle") or {}).get("mode")

    # -- verifying and applying --------------------------------------------------

    def verify_stored(self, name):
        """Re-verify an envelope we accepted earlier (signature and host; its own time, no replay check)."""
        raw = self.state.read_bytes(name)
        if raw is None:
            return None, None
        stored = self.state.read_json(name.replace(".json", ".meta.json"), {}) or {}
        try:
            when = bundles.parse_time(stored.get("created_at", ""))
        except ValueError:
            when = self.clock()
        try:
            return raw, bundles.verify(raw, self.public_key, self.host, None, when)
        except bundles.BundleError as exc:
            raise AgentError("the stored bundle %s failed verification (%s: %s); it is not applied"
                             % (self.state.path(name), _REFUSED_WORD[exc.kind], exc.reason))

    def _apply_engine(self, content):
        request = engine.Request(content, "present", persist=False, peers=self.peers, state_dir=self.state.nft_dir,
                                 unit_dir=None, lock_timeout=60)
        return engine.apply(request)

    @staticmethod
    def ruleset_in_mode(item, mode):
        """The bundle's ruleset rendered for ``mode``: its own, or one it carries for a local mode switch."""
        if item.mode == mode:
            return item.ruleset
        ruleset = (item.mode_rulesets or {}).get(mode)
        if ruleset is None:
            raise AgentError("bundle serial %d carries no %s ruleset (it was published without mode_rulesets); "
                             "publish again with mseg.fleet.publish, or change mseg_mode for this host and publish"
                             % (item.serial, mode))
        return ruleset

    def desired(self):
        """What the kernel should run now: (ruleset text, description) or (None, reason)."""
        override = self.state.read_json("override.json")
        if override and override.get("kind") == "mode":
            _raw, item = self.verify_stored("current.json")
            if item is None:
                raise AgentError("no bundle received yet, so there is no policy to run in %s mode"
                                 % override.get("mode"))
            return self.ruleset_in_mode(item, override.get("mode")), "serial %d mode=%s (local override)" % (
                item.serial, override.get("mode"))
        if override and override.get("kind") == "bypass":
            return render.bypass_ruleset(self.host), "bypass (local override)"
        if override and override.get("kind") == "rollback":
            _raw, item = self.verify_stored("rollback.json")
            if item is None:
                raise AgentError("the rollback override has no bundle; clear it with 'mseg mode clear'")
            return item.ruleset, "serial %d mode=%s (local rollback)" % (item.serial, item.mode)
        _raw, item = self.verify_stored("current.json")
        if item is None:
            return None, "no bundle received yet"
        return item.ruleset, "serial %d mode=%s" % (item.serial, item.mode)

    def apply_desired(self, why):
        """Bring the kernel in line with the desired ruleset (idempotent). Returns the engine's result or None."""
        content, what = self.desired()
        if content is None:
            self.log.info("%s: %s; the table stays as it is", why, what)
            return None
        result = self.applier(content)
        if result.get("changed"):
            self.log.info("%s: applied %s (%s)", why, what, result.get("msg"))
        self.update_status(last_apply={"at": utcnow_text(self.clock()), "epoch": self.clock(), "what": what,
                                       "why": why, "changed": bool(result.get("changed")), "msg": result.get("msg")})
        return result

    def accept(self, raw, source):
        """Handle one envelope fetched from ``source``. Returns applied, unchanged, held, refused or failed."""
        with self.state.locked():
            meta = self.meta()
            if raw == self.state.read_bytes("current.json"):
                return "unchanged"
            try:
                item = bundles.verify(raw, self.public_key, self.host, meta.get("serial"), self.clock())
            except bundles.BundleError as exc:
                self.log.error("bundle refused from %s: %s (%s); keeping serial %s and the live policy",
                               source, _REFUSED_WORD[exc.kind], exc.reason, meta.get("serial"))
                self._refusal = _REFUSED_WORD[exc.kind]
                self.update_status(last_error={"at": utcnow_text(self.clock()), "kind": exc.kind,
                                               "msg": exc.reason, "source": source})
                return "refused"
            override = self.state.read_json("override.json")
            local_mode = override.get("mode") if override and override.get("kind") == "mode" else None
            if not override or local_mode:
                try:
                    result = self.applier(self.ruleset_in_mode(item, local_mode) if local_mode else item.ruleset)
                except (engine.ApplyError, AgentError) as exc:
                    self.log.error("bundle serial %d from %s could not be applied: %s; the previous policy stays",
                                   item.serial, source, exc)
                    self.update_status(last_error={"at": utcnow_text(self.clock()), "kind": "apply",
                                                   "msg": str(exc), "source": source})
                    return "failed"
            self._store(raw, item, meta)
            if override and not local_mode:
                self.log.warning("bundle serial %d mode=%s from %s verified and kept, not applied: local override "
                                 "%s holds (clear it with 'mseg mode clear')", item.serial, item.mode, source,
                                 override.get("kind"))
                self.update_status(last_error=None)
                return "held"
            self.log.info("bundle serial %d mode=%s policy=%s from %s applied (%s)", item.serial,
                          local_mode or item.mode, item.policy_digest[:16], source, result.get("msg"))
            self.update_status(last_error=None, last_apply={
                "at": utcnow_text(self.clock()), "epoch": self.clock(),
                "what": "serial %d mode=%s" % (item.serial, item.mode),
                "why": "new bundle", "changed": bool(result.get("changed")), "msg": result.get("msg")})
            return "applied"

    def _store(self, raw, item, meta):
        current = self.state.read_bytes("current.json")
        if current is not None:
            self.state.write("previous.json", current)
            self.state.write_json("previous.meta.json", self.state.read_json("current.meta.json", {}))
        self.state.write("current.json", raw)
        self.state.write_json("current.meta.json", bundle_fields(item))
        meta = dict(meta, serial=item.serial, bundle=bundle_fields(item))
        self.state.write_json("meta.json", meta)

    # -- polling -------------------------------------------------------------------

    def order(self):
        """Controllers to try: the one that answered last first, then the others in configured order."""
        count = len(self.controllers)
        return [self.controllers[(self.preferred + i) % count] for i in range(count)]

    def poll_once(self):
        """One poll with failover. Returns the outcome (see ``accept``), or ``refused`` / ``unreachable`` when no
        controller gave a bundle that could be accepted.

        A controller whose bundle was refused (forged, stale after a missed publish, for another host) counts as
        failed: the next one is asked at once, and it is not preferred, so one bad replica cannot hold the agent
        back from the good ones. It is asked again with the refused bundle's ETag, which keeps the refusal from
        being downloaded and logged again on every poll while it lasts.
        """
        meta = self.meta()
        etag = meta.get("etag") if self.state.read_bytes("current.json") is not None else None
        failures = []
        refused = False
        for controller in self.order():
            url = controller_url(controller)
            index = self.controllers.index(controller)
            still_refused = index in self._refused
            try:
                status, body, new_etag = self.fetcher(controller, self._refused[index] if still_refused else etag)
            except OSError as exc:
                failures.append("%s: %s" % (url, exc))
                continue
            if status == 304 and still_refused and self._refused[index] is not None:
                failures.append("%s: still serves the bundle refused before" % url)
                refused = True
                continue
            if status == 304:
                outcome = "unchanged"
            elif status == 200:
                outcome = self.accept(body, url)
                if outcome == "refused":
                    self._refused[index] = new_etag
                    failures.append("%s: bundle refused (%s)" % (url, self._refusal))
                    refused = True
                    continue
                if outcome in ("applied", "unchanged", "held") and new_etag:
                    with self.state.locked():
                        self.state.write_json("meta.json", dict(self.meta(), etag=new_etag))
            else:
                failures.append("%s: HTTP %d" % (url, status))
                continue
            self._refused.pop(index, None)
            self.preferred = index
            if failures:
                self._problem("failover to %s after %s" % (url, "; ".join(failures)), logging.WARNING)
            else:
                self._problem(None)
            self.update_status(last_poll={"at": utcnow_text(self.clock()), "controller": url, "result": outcome})
            return outcome
        outcome = "refused" if refused else "unreachable"
        what = "no controller serves a bundle this host accepts" if refused else "every controller is unreachable"
        self._problem("%s (%s); keeping the live policy" % (what, "; ".join(failures)), logging.ERROR)
        self.update_status(last_poll={"at": utcnow_text(self.clock()), "controller": None, "result": outcome,
                                      "detail": "; ".join(failures)})
        return outcome

    def _problem(self, text, level=logging.WARNING):
        """Log a problem once while it lasts, and its end."""
        if text == self._last_problem:
            return
        if text is None:
            self.log.info("controllers reachable again")
        else:
            self.log.log(level, text)
        self._last_problem = text

    def next_delay(self):
        return self.interval * (1 + random.uniform(-self.jitter, self.jitter))

    def run(self, stop):
        self.record_identity()
        with self.state.locked():
            try:
                self.apply_desired("start")
            except (AgentError, engine.ApplyError) as exc:
                self.log.error("start: %s; the live table stays as it is", exc)
        sd_notify("READY=1")
        while not stop.is_set():
            try:
                self.poll_once()
            except (AgentError, engine.ApplyError) as exc:
                self._problem(str(exc), logging.ERROR)
            stop.wait(self.next_delay())

    # -- local overrides ---------------------------------------------------------------

    def set_override(self, override, who):
        with self.state.locked():
            previous = self.state.read_json("override.json")
            override = dict(override, set_at=utcnow_text(self.clock()), set_by=who)
            self.state.write_json("override.json", override)
            try:
                result = self.apply_desired("local override")
            except (AgentError, engine.ApplyError):
                if previous:
                    self.state.write_json("override.json", previous)
                else:
                    self.state.remove("override.json")
                raise
        return result

    def clear_override(self, who):
        with self.state.locked():
            previous = self.state.read_json("override.json")
            if not previous:
                return None, "no local override is set; the agent follows the controllers"
            self.state.remove("override.json")
            self.state.remove("rollback.json")
            self.state.remove("rollback.meta.json")
            self.log.warning("local override %s cleared by %s; following the controllers again",
                             previous.get("kind"), who)
            return self.apply_desired("override cleared"), "cleared the local override %s" % previous.get("kind")

    def set_mode(self, mode, who):
        """A local observe/enforce override: the host runs its policy in that mode, new bundles included."""
        self.log.warning("local override: mode %s set by %s (bundles are applied in %s mode until 'mseg mode "
                         "clear')", mode, who, mode)
        return self.set_override({"kind": "mode", "mode": mode}, who)

    def bypass(self, who):
        self.log.warning("local override: mode bypass set by %s (the table accepts everything until "
                         "'mseg mode clear')", who)
        return self.set_override({"kind": "bypass"}, who)

    def rollback(self, who):
        with self.state.locked():
            raw, item = self.verify_stored("previous.json")
            if item is None:
                raise AgentError("there is no previous bundle to roll back to on this host")
            self.state.write("rollback.json", raw)
            self.state.write_json("rollback.meta.json", bundle_fields(item))
        self.log.warning("local override: rollback to serial %d set by %s (newer bundles are verified and kept "
                         "but not applied until 'mseg mode clear')", item.serial, who)
        return self.set_override({"kind": "rollback", "bundle": bundle_fields(item)}, who)


# --------------------------------------------------------------------------- trace


_TRACE_LISTENER = r"""
import socket, sys
proto, family, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                  socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0" if family == 4 else "::", port))
if proto == "tcp":
    s.listen(8)
print("ready", flush=True)
while True:
    if proto == "tcp":
        c, _peer = s.accept()
        c.close()
    else:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
"""

_TRACE_SENDER = r"""
import socket, subprocess, sys
proto, family, address, port, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
if proto == "icmp":
    ok = subprocess.run(["ping", "-%d" % family, "-c", "1", "-W", str(max(1, int(timeout))), address],
                        capture_output=True).returncode == 0
    print("open" if ok else "timeout")
    sys.exit(0)
s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                  socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    if proto == "tcp":
        s.connect((address, port))
    else:
        s.sendto(b"mseg-trace", (address, port))
        s.recvfrom(64)
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"""


def _local_addresses():
    proc = subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True, check=False)
    try:
        return {item["local"] for link in json.loads(proc.stdout or "[]") for item in link.get("addr_info", [])
                if item.get("local")}
    except (ValueError, TypeError, KeyError):
        return set()


def _log_counters(content):
    """Counters of log rules (they count and continue; they never decide)."""
    names = set()
    for line in content.splitlines():
        if "[MSEG-LOG]" in line and 'counter name "' in line:
            names.add(line.split('counter name "', 1)[1].split('"', 1)[0])
    return names


class Trace:
    """Evaluate the host's own ruleset in the kernel: two scratch network namespaces joined by a veth pair, the
    ruleset loaded into the one that plays this host, one real connection attempt, and the named counters that
    moved. No second implementation of the policy: the kernel decides, with exactly the ruleset the agent runs.
    Needs root (creating network namespaces needs CAP_SYS_ADMIN); touches nothing of the host's own namespace."""

    def __init__(self, content, peers=(), timeout=1.0, runner=subprocess.run):
        self.content = content
        self.peers = list(peers)
        self.timeout = timeout
        self.runner = runner
        tag = "%x" % (os.getpid() & 0xFFFFFF)
        self.ns = {"host": "mseg-trace-%s-h" % tag, "peer": "mseg-trace-%s-p" % tag}
        self.links = ("mtr%sh" % tag, "mtr%sp" % tag)

    def _ip(self, *args):
        proc = self.runner(["ip"] + list(args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AgentError("trace: 'ip %s' failed (%s); mseg trace needs root to create scratch network "
                             "namespaces" % (" ".join(args), proc.stderr.strip()))

    def _in(self, which, argv, text=None):
        return self.runner(["ip", "netns", "exec", self.ns[which]] + argv, input=text, capture_output=True,
                           text=True, check=False)

    def _counters(self):
        proc = self._in("host", [engine.find_nft(), "-j", "list", "counters", "table", "inet", "mseg"])
        found = {}
        try:
            for item in json.loads(proc.stdout or "{}").get("nftables", []):
                if "counter" in item:
                    found[item["counter"]["name"]] = item["counter"].get("packets", 0)
        except ValueError:
            pass
        return found

    def _settled(self, quiet=0.3, limit=3.0):
        """The counters once nothing has moved for ``quiet`` seconds (links coming up send a few packets)."""
        deadline = time.monotonic() + limit
        last = self._counters()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self._counters()
            if now == last:
                break
            last = now
        return last

    def run(self, local, peer, direction, proto, port):
        family = ipaddress.ip_address(local).version
        if ipaddress.ip_address(peer).version != family:
            raise AgentError("trace: %s and %s are of different address families" % (local, peer))
        bits = 32 if family == 4 else 128
        try:
            for name in self.ns.values():
                self._ip("netns", "add", name)
                # no IPv6 chatter (router solicitations, and for an IPv4 trace no IPv6 at all) to count by mistake
                quiet = {"net.ipv6.conf.default.router_solicitations": "0",
                         "net.ipv6.conf.default.disable_ipv6": "1" if family == 4 else "0"}
                for key, value in quiet.items():
                    self.runner(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "%s=%s" % (key, value)],
                                capture_output=True, check=False)
            self._ip("link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])
            ends = (("host", self.links[0], local, peer), ("peer", self.links[1], peer, local))
            for which, link, mine, other in ends:
                self._ip("link", "set", link, "netns", self.ns[which])
                self._ip("-n", self.ns[which], "link", "set", "lo", "up")
                self._ip("-n", self.ns[which], "address", "add", "%s/%d" % (mine, bits), "dev", link,
                         *(["nodad"] if family == 6 else []))
                self._ip("-n", self.ns[which], "link", "set", link, "up")
                self._ip("-n", self.ns[which], "route", "add", "%s/%d" % (other, bits), "dev", link)
            loaded = self._in("host", [engine.find_nft(), "-f", "-"],
                              engine.build_transaction(self.content, self.peers))
            if loaded.returncode != 0:
                raise AgentError("trace: the host's ruleset did not load in the scratch namespace: %s"
                                 % loaded.stderr.strip())
            receiver, sender = ("host", "peer") if direction == "ingress" else ("peer", "host")
            target = local if direction == "ingress" else peer
            before = self._settled()
            listener = None
            if proto != "icmp":
                listener = subprocess.Popen(["ip", "netns", "exec", self.ns[receiver], sys.executable, "-c",
                                             _TRACE_LISTENER, proto, str(family), str(port)],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                if listener.stdout.readline().strip() != "ready":
                    raise AgentError("trace: the scratch listener on %s/%s did not start" % (proto, port))
            try:
                sent = self._in(sender, [sys.executable, "-c", _TRACE_SENDER, proto, str(family), target,
                                         str(port or 0), str(self.timeout)])
            finally:
                if listener is not None:
                    listener.kill()
                    listener.wait()
            after = self._counters()
        finally:
            for name in self.ns.values():
                self.runner(["ip", "netns", "delete", name], capture_output=True, check=False)
        side = "_in" if direction == "ingress" else "_out"  # replies cross the other chain; they decide nothing
        moved = sorted(name for name, packets in after.items() if packets > before.get(name, 0)
                       and (name.endswith(side) or not name.endswith(("_in", "_out"))))
        logged = _log_counters(self.content)
        deciding = [name for name in moved if name not in logged]
        result = sent.stdout.strip() or "timeout"
        return {"direction": direction, "local": local, "peer": peer,
                "port": proto if proto == "icmp" else "%s/%d" % (proto, port),
                "result": result, "allowed": result in ("open", "refused"),
                "decided_by": deciding, "logged_by": sorted(set(moved) & logged)}


def run_trace(agent, src, dst, port_text):
    """``mseg trace``: which of src/dst is this host decides the direction; returns the Trace result."""
    from ansible_collections.mseg.fleet.plugins.module_utils.policy import parse_port
    spec, reason = parse_port(port_text)
    if spec is None or (spec.proto != "icmp" and (spec.first is None or spec.first != spec.last)):
        raise AgentError("--port %r %s" % (port_text, reason or "must name one port, e.g. tcp/5432, udp/53 or icmp"))
    local = _local_addresses()
    for value, what in ((src, "--src"), (dst, "--dst")):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise AgentError("%s %r is not an IP address" % (what, value))
    if dst in local and src not in local:
        direction, mine, other = "ingress", dst, src
    elif src in local and dst not in local:
        direction, mine, other = "egress", src, dst
    else:
        raise AgentError("one of --src and --dst must be an address of this host (it has %s), the other a peer: "
                         "the host's bundle decides only its own ingress and egress" % ", ".join(sorted(local)))
    content, what = agent.desired()
    if content is None:
        raise AgentError("no bundle to trace: %s" % what)
    result = Trace(content, agent.peers).run(mine, other, direction, spec.proto, spec.first)
    result["ruleset"] = what
    return result


# --------------------------------------------------------------------------- logging


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


# --------------------------------------------------------------------------- command line


def counters(nft_path=None):
    """Named counters of table inet mseg: [(name, packets, bytes)], or None when nft cannot list them."""
    try:
        path = nft_path or engine.find_nft()
    except engine.ApplyError:
        return None
    proc = subprocess.run([path, "-j", "list", "counters", "table", "inet", "mseg"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return None
    try:
        items = json.loads(proc.stdout).get("nftables", [])
    except ValueError:
        return None
    found = []
    for item in items:
        counter = item.get("counter") if isinstance(item, dict) else None
        if counter:
            found.append((counter.get("name"), counter.get("packets", 0), counter.get("bytes", 0)))
    return sorted(found)


def format_status(status, counted):
    bundle = status.get("bundle") or {}
    override = status.get("override")
    lines = ["host         %s" % status.get("host"),
             "mode         %s%s" % (status.get("mode") or "none (no bundle yet)",
                                    " (local override %s since %s by %s; 'mseg mode clear' ends it)"
                                    % (override.get("kind"), override.get("set_at"), override.get("set_by"))
                                    if override else "")]
    if bundle:
        lines += ["serial       %s (created %s, valid until %s)" % (bundle.get("serial"), bundle.get("created_at"),
                                                                    bundle.get("valid_until")),
                  "policy       %s" % bundle.get("policy_digest"),
                  "ruleset      sha256 %s" % bundle.get("ruleset_sha256")]
    else:
        lines.append("serial       none: no bundle accepted yet")
    poll = status.get("last_poll") or {}
    if poll:
        lines.append("last poll    %s %s: %s%s" % (poll.get("at"), poll.get("controller") or "(no controller)",
                                                   poll.get("result"),
                                                   " (%s)" % poll["detail"] if poll.get("detail") else ""))
    applied = status.get("last_apply") or {}
    if applied:
        lines.append("last apply   %s %s (%s): %s" % (applied.get("at"), applied.get("what"), applied.get("why"),
                                                      applied.get("msg")))
    error = status.get("last_error")
    if error:
        lines.append("last error   %s %s: %s" % (error.get("at"), error.get("kind"), error.get("msg")))
    if counted is None:
        lines.append("counters     unavailable (run as root: listing nftables needs CAP_NET_ADMIN)")
    else:
        lines.append("counters     %d" % len(counted))
        for name, packets, size in counted:
            lines.append("  %-28s %12d packets %14d bytes" % (name, packets, size))
    return "\n".join(lines)


def _operator():
    """Who runs the CLI, for the log: the login user behind sudo/su when known."""
    try:
        with open("/proc/self/loginuid") as handle:
            uid = int(handle.read().strip())
    except (OSError, ValueError):
        uid = -1
    if 0 <= uid < 4294967295:
        try:
            import pwd
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return "uid %d" % uid
    return os.environ.get("SUDO_USER") or "root"


def _as_agent_user(state_dir, argv):
    """Run a changing command as the owner of the state directory with only CAP_NET_ADMIN (files stay its)."""
    if os.geteuid() != 0 or os.environ.get("MSEG_AS_AGENT"):
        return
    try:
        owner = os.stat(state_dir)
    except OSError:
        return
    if owner.st_uid == 0:
        return
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    env = dict(os.environ, MSEG_AS_AGENT="1", MSEG_OPERATOR=_operator())
    os.execve(setpriv, [setpriv, "--reuid=%d" % owner.st_uid, "--regid=%d" % owner.st_gid, "--clear-groups",
                        "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
                        "--bounding-set=-all,+net_admin", "--", sys.executable, os.path.abspath(sys.argv[0])] + argv,
              env)


def _say(text):
    """The CLI's answer on standard output."""
    sys.stdout.write(text + "\n")


def _parser(prog):
    parser = argparse.ArgumentParser(prog=prog, description="mseg.fleet host agent and emergency CLI")
    parser.add_argument("--config", help="agent configuration (default: the systemd credential, else %s)"
                        % DEFAULT_CONFIG)
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="agent state directory (default %(default)s)")
    parser.add_argument("--log-file", default=None, help="runtime log (default: from the configuration for run and "
                        "restore, %s for the CLI)" % DEFAULT_LOG_FILE)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("run", help="poll the controllers and apply new bundles (the systemd service)")
    sub.add_parser("restore", help="apply the last good bundle (or the local override) once; used at boot")
    status = sub.add_parser("status", help="mode, serial, policy hash, last poll, per-rule counters")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    mode = sub.add_parser("mode", help="set a local mode override (bypass, observe, enforce); clear to follow the "
                                       "controllers again")
    mode.add_argument("mode", choices=("bypass", "observe", "enforce", "clear"))
    sub.add_parser("rollback", help="apply the previous good bundle and hold it until 'mode clear'")
    trace = sub.add_parser("trace", help="send one real packet through this host's ruleset in scratch namespaces")
    trace.add_argument("--src", required=True, help="source address (this host's for egress)")
    trace.add_argument("--dst", required=True, help="destination address (this host's for ingress)")
    trace.add_argument("--port", required=True, help="tcp/5432, udp/53 or icmp")
    trace.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv=None, prog="mseg"):
    """Entry point of ``mseg-agent`` and ``mseg``. Returns the exit status; errors are one line, no traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    try:
        if args.command in ("run", "restore"):
            return _daemon(args)
        return _cli(args, argv)
    except (AgentError, engine.ApplyError) as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _daemon(args):
    config = Config.load(args.config)
    log = make_logger(args.log_file or config.log_file, sys.stderr if args.command == "restore" else None)
    if args.command == "restore":
        agent = Agent.from_config(config, log, with_tls=False)
        agent.record_identity()
        with agent.state.locked():
            try:
                agent.apply_desired("boot restore")
            except (AgentError, engine.ApplyError) as exc:
                log.error("boot restore failed: %s; the table stays as it is", exc)
                raise
        return 0
    agent = Agent.from_config(config, log)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("mseg-agent starting for %s: controllers %s, interval %.1fs (+/-%d%%), drop log from %s",
             config.host, ", ".join(controller_url(c) for c in config.controllers), config.interval,
             config.jitter * 100, config.droplog)
    if config.droplog != "none":
        DropLog(config.droplog, log, stop).start()
    agent.run(stop)
    log.info("mseg-agent stopping")
    return 0


def _cli(args, argv):
    if args.command == "status":
        status = State(args.state_dir).read_json("status.json")
        if status is None:
            raise AgentError("%s/status.json does not exist: the agent has not run on this host (systemctl status "
                             "mseg-agent)" % args.state_dir)
        counted = counters()
        if args.json:
            status["counters"] = None if counted is None else [
                {"name": n, "packets": p, "bytes": b} for n, p, b in counted]
            _say(json.dumps(status, indent=1, sort_keys=True))
        else:
            _say(format_status(status, counted))
        return 0
    if args.command == "trace":
        result = run_trace(Agent.from_identity(args.state_dir, make_logger(None)), args.src, args.dst, args.port)
        if args.json:
            _say(json.dumps(result, indent=1, sort_keys=True))
        else:
            _say("%s %s -> %s %s: %s (%s) in %s; decided by %s%s" % (
                result["direction"], args.src, args.dst, result["port"], "allowed" if result["allowed"] else "dropped",
                result["result"], result["ruleset"], ", ".join(result["decided_by"]) or "the chain policy",
                "; logged by %s" % ", ".join(result["logged_by"]) if result["logged_by"] else ""))
        return 0 if result["allowed"] else 3
    _as_agent_user(args.state_dir, argv)
    who = os.environ.get("MSEG_OPERATOR") or _operator()
    log_file = args.log_file or DEFAULT_LOG_FILE
    log = make_logger(log_file if os.path.isdir(os.path.dirname(log_file)) else None)
    agent = Agent.from_identity(args.state_dir, log)
    if args.command == "rollback":
        result = agent.rollback(who)
        _say("rolled back to the previous bundle: %s" % result.get("msg"))
    elif args.mode == "bypass":
        result = agent.bypass(who)
        _say("mode bypass set locally: %s; 'mseg mode clear' returns to the controllers' policy" % result.get("msg"))
    elif args.mode in ("observe", "enforce"):
        result = agent.set_mode(args.mode, who)
        _say("mode %s set locally: %s; 'mseg mode clear' returns to the controllers' mode"
             % (args.mode, result.get("msg") if result else "no bundle yet"))
    else:
        result, message = agent.clear_override(who)
        _say(message + (": %s" % result.get("msg") if result else ""))
    return 0
