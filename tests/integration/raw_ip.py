"""Send or receive raw IP datagrams of one protocol number (run inside a test namespace, as root).

``raw_ip.py send PROTO DST`` sends one datagram (prints "blocked" when the sender's own output hook drops it);
``raw_ip.py receive PROTO SECONDS`` prints "ready", then one
"from <address>" line per datagram that reached the socket (after the input hook) until SECONDS pass.
"""

import select
import socket
import sys
import time


def main(argv):
    mode, proto = argv[0], int(argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    if mode == "send":
        try:
            sock.sendto(b"mseg-raw-ip-test", (argv[2], 0))
        except PermissionError:
            print("blocked", flush=True)
        return 0
    print("ready", flush=True)
    deadline = time.monotonic() + float(argv[2])
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return 0
        if select.select([sock], [], [], left)[0]:
            _data, peer = sock.recvfrom(2048)
            print("from", peer[0], flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
