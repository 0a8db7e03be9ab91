"""Hold TCP connections open, as a client that never starts its TLS handshake would (run inside a test namespace).

``hold_tcp.py serve PORT`` listens on PORT (IPv4 and IPv6), prints "ready", and accepts every connection without
ever closing one, until it is killed.
``hold_tcp.py hold HOST PORT COUNT TIMEOUT`` makes COUNT connection attempts to HOST:PORT one after the other, each
given TIMEOUT seconds, prints "connected" or "timeout" for each, then "holding", and keeps every connection it made
open until its standard input closes.
"""

import socket
import sys


def serve(port):
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", port))
    listener.listen(128)
    print("ready", flush=True)
    held = []
    while True:
        held.append(listener.accept()[0])


def hold(host, port, count, timeout):
    held = []
    for _attempt in range(count):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except socket.timeout:
            print("timeout", flush=True)
            sock.close()
            continue
        held.append(sock)
        print("connected", flush=True)
    print("holding", flush=True)
    sys.stdin.read()


def main(argv):
    if argv[0] == "serve":
        serve(int(argv[1]))
    else:
        hold(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
