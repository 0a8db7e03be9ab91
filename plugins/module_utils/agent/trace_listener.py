# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``mseg trace``'s listener, run inside the scratch namespace that receives the traced flow.

Usage: ``python3 trace_listener.py PROTO FAMILY PORT``; prints ``ready`` once it listens, then accepts (tcp) or
echoes (udp) until it is killed. A program of its own, not a string: the agent role installs it with the package.
"""

from __future__ import annotations

import socket
import sys


def main(argv):
    proto, family, port = argv[0], int(argv[1]), int(argv[2])
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                         socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0" if family == 4 else "::", port))
    if proto == "tcp":
        sock.listen(8)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        if proto == "tcp":
            conn, _peer = sock.accept()
            conn.close()
        else:
            data, peer = sock.recvfrom(2048)
            sock.sendto(data, peer)


if __name__ == "__main__":
    main(sys.argv[1:])
