# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The discovery collector: the connections a host accepts and opens, from the kernel's connection tracking.

Runs on a managed host for one window (docs/discovery.md).  It dumps the conntrack table over netlink
(NETLINK_NETFILTER, ctnetlink) every ``interval`` seconds and counts each connection once (by its conntrack id), and
reads the listening sockets from /proc/net to tell servers from clients.  Netlink rather than ``conntrack -L`` from
conntrack-tools: no package to install on every host (nor in the lab's image), no text format to parse, and the
dump is a few system calls.  A TCP connection stays in the table at least 120 s after it closes (TIME_WAIT), UDP
30 s, so sampling every few seconds sees the short ones too.

Only headers the kernel already keeps are read (addresses, protocol, ports); no packet, no payload.  Bounded: at
most ``max_flows`` distinct flows are kept (more are counted, not stored), the process runs niced in a transient
unit with a memory and CPU cap and a run-time limit (the module plugins/modules/discover_collect.py starts it), and
writes one CSV file, in the engine's record format, rewritten atomically after every sample.

Stdlib only, no import of the collection: the module writes this file's own source to the host and runs it with the
host's python3.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import errno
import json
import os
import socket
import struct
import sys
import time

FIELDS = ("src", "dst", "proto", "dport", "count", "listening")
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_TYPE_MASK = 0x3FFF
CTA_TUPLE_ORIG = 1
CTA_ID = 12
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP = {1: 4, 2: 4, 3: 6, 4: 6}            # CTA_IP_V4_SRC, _V4_DST, _V6_SRC, _V6_DST -> IP version
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")

# /proc/net/{tcp,udp}[6]: a TCP socket in state 0A listens; a UDP socket bound with no peer receives.
_LISTEN_FILES = (("tcp", "/proc/net/tcp", "0A"), ("tcp", "/proc/net/tcp6", "0A"),
                 ("udp", "/proc/net/udp", "07"), ("udp", "/proc/net/udp6", "07"))


class CollectError(Exception):
    """The environment does not allow collecting; the message says what and how to fix it."""


def attributes(data, offset, end):
    """Yield (type, payload) of the netlink attributes in ``data[offset:end]``."""
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def parse_tuple(payload):
    """(src, dst, proto number, sport, dport) of a CTA_TUPLE_* payload; ports are None for portless protocols."""
    src = dst = None
    proto = sport = dport = None
    for kind, value in attributes(payload, 0, len(payload)):
        if kind == CTA_TUPLE_IP:
            for ip_kind, address in attributes(value, 0, len(value)):
                if ip_kind in CTA_IP:
                    text = socket.inet_ntop(socket.AF_INET if CTA_IP[ip_kind] == 4 else socket.AF_INET6, address)
                    if ip_kind in (1, 3):
                        src = text
                    else:
                        dst = text
        elif kind == CTA_TUPLE_PROTO:
            for proto_kind, number in attributes(value, 0, len(value)):
                if proto_kind == CTA_PROTO_NUM:
                    proto = number[0] if isinstance(number[0], int) else ord(number[0])
                elif proto_kind == CTA_PROTO_SRC_PORT:
                    sport = struct.unpack("!H", number[:2])[0]
                elif proto_kind == CTA_PROTO_DST_PORT:
                    dport = struct.unpack("!H", number[:2])[0]
    return src, dst, proto, sport, dport


def parse_messages(data):
    """Yield (conntrack id, original tuple) per conntrack message in a netlink buffer; a bool True at NLMSG_DONE.
    Raises CollectError on a netlink error message."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        if kind == NLMSG_DONE:
            yield True
            return
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, offset + _HEADER.size)[0]
            if code:
                raise CollectError("the kernel refused the conntrack dump: %s" % os.strerror(-code))
        elif kind >> 8 == NFNL_SUBSYS_CTNETLINK:
            ident, orig = None, None
            # nfgenmsg (4 bytes) follows the header, then the attributes
            for attr, value in attributes(data, offset + _HEADER.size + 4, offset + length):
                if attr == CTA_TUPLE_ORIG:
                    orig = parse_tuple(value)
                elif attr == CTA_ID:
                    ident = struct.unpack("!I", value[:4])[0]
            if orig is not None:
                yield ident, orig
        offset += (length + 3) & ~3


def dump_conntrack(sock=None):
    """Every entry of this network namespace's conntrack table: a list of (id, (src, dst, proto, sport, dport))."""
    own = sock is None
    if own:
        sock = open_netlink()
    try:
        request = _HEADER.pack(_HEADER.size + 4, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                               NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
        sock.send(request)
        entries = []
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return entries
            for item in parse_messages(data):
                if item is True:
                    return entries
                entries.append(item)
    finally:
        if own:
            sock.close()


def open_netlink():
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.bind((0, 0))
    except (OSError, AttributeError) as exc:
        raise CollectError("cannot open a netfilter netlink socket (%s): the collector needs Linux and root "
                           "(become: true)" % (getattr(exc, "strerror", None) or exc))
    return sock


def listening_ports(files=_LISTEN_FILES):
    """{(proto word, port)} of the sockets that listen (TCP) or receive unconnected (UDP) on this host."""
    found = set()
    for proto, path, state in files:
        try:
            with open(path) as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == state:
                        found.add((proto, int(fields[1].rsplit(":", 1)[1], 16)))
        except IOError as exc:
            if exc.errno != errno.ENOENT:   # no IPv6 on this host: no tcp6
                raise
    return found


def _local(text):
    return text.startswith("127.") or text == "::1" or text.startswith("::ffff:127.")


class Collector(object):
    """Counts connections by endpoint pair and service, each conntrack id once, at most ``max_flows`` pairs."""

    def __init__(self, max_flows):
        self.max_flows = max_flows
        self.counts = {}
        self.seen = set()
        self.listening = set()
        self.overflow = 0
        self.samples = 0

    def sample(self, entries, listening):
        self.samples += 1
        self.listening |= listening
        now = set()
        for ident, (src, dst, proto, _sport, dport) in entries:
            key = ident if ident is not None else (src, dst, proto, _sport, dport)
            now.add(key)
            if key in self.seen or src is None or dst is None or src == dst or _local(src) or _local(dst):
                continue
            word = PROTOCOLS.get(proto)
            if word is None:
                flow = (src, dst, "icmp" if proto in (1, 58) else str(proto), "")
            elif not dport:
                continue
            else:
                flow = (src, dst, word, dport)
            if flow in self.counts:
                self.counts[flow] += 1
            elif len(self.counts) < self.max_flows:
                self.counts[flow] = 1
            else:
                self.overflow += 1
        # a connection is counted once while it lives: the ids of the last dump are all that must be remembered
        self.seen = now

    def rows(self, local_addresses):
        """CSV rows in the engine's format; ``listening`` is known only for flows this host receives."""
        rows = []
        for (src, dst, proto, port), count in sorted(self.counts.items(), key=lambda item: str(item[0])):
            if dst in local_addresses and port != "":
                listening = "true" if (proto, port) in self.listening else "false"
            else:
                listening = ""
            rows.append((src, dst, proto, str(port), str(count), listening))
        return rows


def local_addresses(path_v6="/proc/net/if_inet6"):
    """This host's addresses: IPv4 from the kernel's local routing table (/proc/net/fib_trie), IPv6 from
    /proc/net/if_inet6."""
    found = set()
    try:
        with open("/proc/net/fib_trie") as handle:
            last = None
            for line in handle:
                words = line.split()
                if words[:1] == ["|--"] and len(words) == 2:
                    last = words[1]
                elif "/32 host LOCAL" in line and last:
                    found.add(last)
    except IOError:
        pass
    try:
        with open(path_v6) as handle:
            for line in handle:
                hexa = line.split()[0]
                found.add(socket.inet_ntop(socket.AF_INET6, bytes(bytearray.fromhex(hexa))))
    except (IOError, ValueError, IndexError):
        pass
    return found


def write_records(path, rows, status):
    """The records as CSV, and ``status`` as JSON beside them (path + '.json'), each written atomically, 0600."""
    for target, text in ((path, "".join(",".join(row) + "\n" for row in [FIELDS] + rows)),
                         (path + ".json", json.dumps(status, sort_keys=True) + "\n")):
        scratch = target + ".tmp"
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.rename(scratch, target)


def run(seconds, interval, max_flows, out, clock=time.time, sleep=time.sleep, dump=dump_conntrack,
        listen=listening_ports):
    """Sample for ``seconds``, rewriting ``out`` after every sample; return the final status."""
    collector = Collector(max_flows)
    addresses = local_addresses()
    start = clock()
    deadline = start + seconds
    sock = open_netlink() if dump is dump_conntrack else None
    status = {}
    while True:
        entries = dump(sock) if sock is not None else dump()
        collector.sample(entries, listen())
        now = clock()
        status = {"started": start, "updated": now, "seconds": seconds, "samples": collector.samples,
                  "flows": len(collector.counts), "overflow": collector.overflow, "max_flows": max_flows,
                  "finished": now >= deadline, "conntrack_entries": len(entries)}
        write_records(out, collector.rows(addresses), status)
        if now >= deadline:
            return status
        sleep(max(0.0, min(interval, deadline - now)))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Sample the conntrack table into flow records (mseg.fleet).")
    parser.add_argument("--seconds", type=int, required=True)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--max-flows", type=int, default=100000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        run(args.seconds, args.interval, args.max_flows, args.out)
    except CollectError as exc:
        sys.stderr.write("mseg discover: %s\n" % exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())   # run as a script by the transient unit, never imported by a module to exit
