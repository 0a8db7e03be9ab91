# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``mseg trace``'s sender, run inside the scratch namespace that sends the traced flow.

Usage: ``python3 trace_sender.py PROTO FAMILY ADDRESS PORT TIMEOUT``; prints ``open``, ``refused`` or ``timeout``.
"""

from __future__ import annotations

import socket
import subprocess
import sys


def main(argv):
    proto, family, address, port, timeout = argv[0], int(argv[1]), argv[2], int(argv[3]), float(argv[4])
    if proto == "icmp":
        ok = subprocess.run(["ping", "-%d" % family, "-c", "1", "-W", str(max(1, int(timeout))), address],
                            capture_output=True, check=False).returncode == 0
        sys.stdout.write("open\n" if ok else "timeout\n")
        return
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                         socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        if proto == "tcp":
            sock.connect((address, port))
        else:
            sock.sendto(b"mseg-trace", (address, port))
            sock.recvfrom(64)
        sys.stdout.write("open\n")
    except ConnectionRefusedError:
        sys.stdout.write("refused\n")
    except OSError:
        sys.stdout.write("timeout\n")


if __name__ == "__main__":
    main(sys.argv[1:])
