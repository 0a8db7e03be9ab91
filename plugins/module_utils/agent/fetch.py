# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch the bundle from the controllers over mutual TLS 1.3, one kept-alive connection per controller.

A controller is not trusted to behave: every fetch ends by a hard deadline (``DEADLINE_FACTOR`` times the agent's
timeout, on the whole fetch: connect, handshake, headers and body, however slowly the bytes drip), the body is
capped (``max_body``) and must nest JSON no deeper than ``MAX_DEPTH`` before anything parses it. Each of these
raises ``OSError``, so the caller fails over to the next controller. The TLS files are re-read when they change
(``Credentials``), so a renewed certificate reaches the running agent.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import threading

from ansible_collections.mseg.fleet.plugins.module_utils.agent.config import DEFAULT_MAX_BODY
from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.agent.pin import require_controller

DEADLINE_FACTOR = 3       # a fetch ends at this many times the agent's timeout, whatever the controller does
MAX_DEPTH = 32            # an envelope nests 1 deep; its payload is parsed only after the signature holds
CHUNK = 64 * 1024
TLS_FILES = ("tls_ca", "tls_cert", "tls_key", "tls_crl")


def tls_context(config):
    """Client context: TLS 1.3 only, the fleet CA only, our certificate for mutual TLS. With ``tls_crl`` (the pki
    role's CRL) a revoked controller is refused like a foreign one, so a compromised replica that was revoked
    serves no agent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cafile=config.file("tls_ca"))
        if config.files.get("tls_crl"):
            context.load_verify_locations(cafile=config.file("tls_crl"))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        context.load_cert_chain(config.file("tls_cert"), config.file("tls_key"))
    except (OSError, ssl.SSLError) as exc:
        raise AgentError("cannot load the agent's TLS files (%s): run the mseg.fleet.pki role with the agent "
                         "profile, then the mseg.fleet.agent role" % exc)
    return context


class BadResponse(OSError):
    """A controller's answer broke a bound (size, nesting): a failover, never a retry on the same controller."""


def _fingerprint(paths):
    """What identifies the files' contents: device, inode, mtime, size and sha256 of each (None: unreadable)."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            found.append((path, None))
            continue
        found.append((path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, digest))
    return tuple(found)


class Credentials:
    """The client TLS context, rebuilt when the CA, certificate, key or CRL files change (checked per fetch cycle).

    A renewal that leaves the files unusable (a key that does not match the certificate, a half-written file)
    keeps the previous context and says why through ``problem``; the next change is tried again.
    """

    def __init__(self, config, build=tls_context):
        self.config = config
        self.build = build
        self.problem = None
        self._seen = self._fingerprint()
        self.context = build(config)
        self.generation = 0

    def _fingerprint(self):
        return _fingerprint([self.config.file(key) for key in TLS_FILES if self.config.files.get(key)])

    def refresh(self):
        """Rebuild the context if the files changed; True when a new context is in use."""
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            context = self.build(self.config)
        except AgentError as exc:
            self.problem = "the changed TLS files cannot be used, keeping the previous ones: %s" % exc
            return False
        self.problem = None
        self.context = context
        self.generation += 1
        return True


def json_depth(data, limit):
    """True when the JSON text ``data`` (bytes) nests arrays/objects at most ``limit`` deep.

    A linear scan that skips strings, so no parser recursion ever sees a hostile nesting.
    """
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return True


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection whose socket exists before the TLS handshake, so a deadline can cut the handshake too."""

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
        self.sock.do_handshake()


class _Deadline:
    """Shut the connection's socket down at ``seconds`` from now: every blocked read or handshake then fails."""

    def __init__(self, conn, seconds):
        self.conn = conn
        self.expired = False
        self.timer = threading.Timer(seconds, self._cut)
        self.timer.daemon = True

    def _cut(self):
        self.expired = True
        sock = self.conn.sock
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain shutdown: unblocks a TLS read as well
            except OSError:
                pass  # already closed

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


class Fetcher:
    """GET the bundle over one kept-alive HTTPS connection per controller (a TLS handshake per connection, not per
    poll). A reused connection the server has closed is retried once on a fresh one; any other failure (including
    the deadline, the body cap and the nesting bound) raises OSError, so the caller fails over to the next
    controller. ``credentials`` is a ``Credentials`` (or an ``ssl.SSLContext`` that never changes)."""

    HEADERS = {"User-Agent": "mseg-agent", "Accept": "application/json"}

    def __init__(self, credentials, timeout, max_body=DEFAULT_MAX_BODY, deadline=None):
        self.credentials = credentials
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else DEADLINE_FACTOR * timeout
        self.max_body = max_body
        self.connections = {}

    def context(self):
        return getattr(self.credentials, "context", self.credentials)

    def refresh(self):
        """Pick up changed TLS files (once per fetch cycle): new connections use them. True when they changed."""
        if not hasattr(self.credentials, "refresh") or not self.credentials.refresh():
            return False
        for controller in list(self.connections):
            self._drop(controller)
        return True

    def _drop(self, controller):
        conn = self.connections.pop(controller, None)
        if conn is not None:
            conn.close()

    def _read_body(self, response):
        length = response.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            raise BadResponse("the response announces %s bytes, more than the agent's limit of %d (max_body)"
                              % (length.strip(), self.max_body))
        chunks, size = [], 0
        while True:
            chunk = response.read(min(CHUNK, self.max_body + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body:
                raise BadResponse("the response is larger than the agent's limit of %d bytes (max_body)" % self.max_body)
        return b"".join(chunks)

    def _once(self, controller, headers):
        reused = controller in self.connections
        if not reused:
            host, port, _path = controller
            self.connections[controller] = _Connection(host, port, timeout=self.timeout, context=self.context())
        conn = self.connections[controller]
        with _Deadline(conn, self.deadline) as deadline:
            try:
                conn.request("GET", controller[2], headers=headers)
                require_controller(conn.sock.getpeercert())
                response = conn.getresponse()
                body = self._read_body(response)
            except BadResponse:
                self._drop(controller)
                raise
            except Exception as exc:  # a controller's answer must never end the agent: every failure is a failover
                self._drop(controller)
                if deadline.expired:
                    raise OSError("no complete answer within the fetch deadline of %gs (%g x timeout)"
                                  % (self.deadline, self.deadline / self.timeout)) from None
                return reused, exc
        if deadline.expired:
            self._drop(controller)
            raise OSError("no complete answer within the fetch deadline of %gs" % self.deadline)
        if response.will_close:
            self._drop(controller)
        if response.status == 200 and not json_depth(body, MAX_DEPTH):
            raise BadResponse("the response nests JSON deeper than %d levels; a bundle envelope never does" % MAX_DEPTH)
        return response.status, body, response.getheader("ETag")

    def __call__(self, controller, etag):
        headers = dict(self.HEADERS)
        if etag:
            headers["If-None-Match"] = etag
        answer = self._once(controller, headers)
        if len(answer) == 2:
            reused, exc = answer
            if not reused:
                raise OSError(str(exc) or exc.__class__.__name__)
            answer = self._once(controller, headers)
            if len(answer) == 2:
                raise OSError(str(answer[1]) or answer[1].__class__.__name__)
        return answer


def controller_url(controller):
    host, port, path = controller
    return "https://%s:%d%s" % ("[%s]" % host if ":" in host else host, port, path)
