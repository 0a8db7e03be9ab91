# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch the bundle from the controllers over mutual TLS 1.3, one kept-alive connection per controller."""

from __future__ import annotations

import http.client
import ssl

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.agent.pin import require_controller


def tls_context(config):
    """Client context: TLS 1.3 only, the fleet CA only, our certificate for mutual TLS. With ``tls_crl`` (the pki
    role's CRL) a revoked controller is refused like a foreign one, so a compromised replica that was revoked
    serves no agent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cafile=config.file("tls_ca"))
        if config.files["tls_crl"]:
            context.load_verify_locations(cafile=config.file("tls_crl"))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
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
                require_controller(conn.sock.getpeercert())
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
