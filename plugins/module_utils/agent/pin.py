# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent talks only to a controller: the server's verified certificate must carry the controller identity.

The fleet CA signs every host's certificates; the name check of TLS only proves that the server owns the address
or name the agent dialled. The controller identity (a URI subject alternative name from the wire contract) is
what the pki role gives the controller profile alone and refuses in any other CSR, so a host with a certificate of
its own (reached through a hijacked name or address) cannot serve bundles to the agents.
"""

from __future__ import annotations

from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import CONTROLLER_IDENTITY


def require_controller(peer_cert):
    """Raise OSError (the fetch fails over) unless ``peer_cert``, the verified certificate as
    ``ssl.SSLSocket.getpeercert()`` returns it, names ``CONTROLLER_IDENTITY`` as a URI."""
    names = (peer_cert or {}).get("subjectAltName", ())
    if ("URI", CONTROLLER_IDENTITY) not in names:
        raise OSError("the server's certificate does not carry the controller identity URI:%s (it is not a "
                      "controller's, or it was issued before the controller identity: run mseg.fleet.pki on the "
                      "controllers)" % CONTROLLER_IDENTITY)
