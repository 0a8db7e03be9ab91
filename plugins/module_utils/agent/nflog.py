# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Records of the netfilter logger (NFLOG), read over netlink in plain Python: the one source of drop, audit and
log events that machines trust.

A kernel log line (``/dev/kmsg``, the journal) can be written by any local user (``logger -k``, ``/dev/kmsg`` is
writable by everyone, and many kernel messages embed user-chosen text), so ``[MSEG-DROP] ...`` text there proves
nothing. An NFLOG record is sent by the kernel's ``log group N`` statement only, to a netlink socket that needs
CAP_NET_ADMIN to bind: the ruleset writes each event to the group the wire contract assigns its kind
(``contract.NFLOG_GROUP``), and this reader binds those groups and parses every record strictly: the group must be
its kind's, the prefix exactly a contract prefix, and the packet an IPv4 or IPv6 header that parses; anything else
is counted as malformed and dropped. Cost: one socket per reader, O(record size) per record.

The protocol (linux/netfilter/nfnetlink_log.h): NFULNL_MSG_CONFIG messages (subsystem NFNL_SUBSYS_ULOG) bind the
socket to a group and ask for a copy of the packet's first bytes; each record is an NFULNL_MSG_PACKET message
whose attributes carry the prefix (NFULA_PREFIX), the interfaces (NFULA_IFINDEX_INDEV/OUTDEV) and the packet from
its network header on (NFULA_PAYLOAD). NFLOG works per network namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import Event

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | 0
NFULNL_MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFNETLINK_V0 = 0
# configuration attributes and commands
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
# record attributes
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLA_TYPE_MASK = 0x3FFF
# Enough of the packet for the IPv6 header, extension-free, and the ports: the reader needs no more.
COPY_RANGE = 128
# Protocol names as the kernel log line's parser gives them (common.logline); others by number.
_PROTO_NAME = {1: "icmp", 58: "icmp", 6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}
# Transport protocols whose destination port a record carries (in the first 4 bytes after the IP header).
_PORTED = (6, 17, 132, 136)
_KIND_OF_GROUP = {group: kind for kind, group in contract.NFLOG_GROUP.items()}

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")


class Record(namedtuple("Record", "group prefix indev outdev payload")):
    """One NFLOG record as it came off the socket: the group, the prefix (bytes, without its NUL), the input and
    output interface indexes (0: none) and the packet from its network header on."""

    __slots__ = ()


def _align(length):
    return (length + 3) & ~3


def _attribute(kind, data):
    return _NLATTR.pack(_NLATTR.size + len(data), kind) + data + b"\0" * (_align(len(data)) - len(data))


def config_message(group, attributes, seq, family=socket.AF_UNSPEC):
    """One NFULNL_MSG_CONFIG request for ``group`` (asking for an acknowledgement)."""
    body = _NFGENMSG.pack(family, NFNETLINK_V0, group) + b"".join(_attribute(k, d) for k, d in attributes)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def attributes(data):
    """The (type, value) pairs of a netlink attribute stream; stops at the first malformed attribute."""
    at = 0
    while at + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, at)
        if length < _NLATTR.size or at + length > len(data):
            return
        yield kind & NLA_TYPE_MASK, data[at + _NLATTR.size:at + length]
        at += _align(length)


def messages(data):
    """The (type, flags, payload) of each netlink message in one datagram; stops at the first malformed one."""
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        length, kind, flags, _seq, _pid = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size or at + length > len(data):
            return
        yield kind, flags, data[at + _NLMSGHDR.size:at + length]
        at += _align(length)


def parse_record(payload):
    """A Record from the payload of an NFULNL_MSG_PACKET message, or None when it is not one we can read."""
    if len(payload) < _NFGENMSG.size:
        return None
    _family, _version, group = _NFGENMSG.unpack_from(payload)
    found = {}
    for kind, value in attributes(payload[_NFGENMSG.size:]):
        found.setdefault(kind, value)
    if NFULA_PREFIX not in found or NFULA_PAYLOAD not in found:
        return None
    index = {}
    for kind in (NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV):
        value = found.get(kind, b"")
        index[kind] = struct.unpack("!I", value)[0] if len(value) == 4 else 0
    return Record(group, found[NFULA_PREFIX].split(b"\0", 1)[0], index[NFULA_IFINDEX_INDEV],
                  index[NFULA_IFINDEX_OUTDEV], found[NFULA_PAYLOAD])


def _packet(data):
    """(src, dst, protocol name, destination port or None) of an IPv4/IPv6 packet, or None."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        header = (data[0] & 0x0F) * 4
        if header < 20 or len(data) < header:
            return None
        proto, src, dst = data[9], data[12:16], data[16:20]
        fragment = struct.unpack("!H", data[6:8])[0] & 0x1FFF
        transport = data[header:] if not fragment else b""
    elif version == 6 and len(data) >= 40:
        proto, src, dst, transport = data[6], data[8:24], data[24:40], data[40:]
    else:
        return None
    name = _PROTO_NAME.get(proto, str(proto))
    dport = struct.unpack("!H", transport[2:4])[0] if proto in _PORTED and len(transport) >= 4 else None
    return (ipaddress.ip_address(bytes(src)).compressed, ipaddress.ip_address(bytes(dst)).compressed, name, dport)


def record_event(record):
    """The Event an NFLOG record stands for, or None unless it is exactly what an mseg ruleset writes: a contract
    prefix (``[MSEG-DROP] ID=1024 ``) in its kind's group, on an IP packet."""
    try:
        prefix = record.prefix.decode("ascii")
    except UnicodeDecodeError:
        return None
    named = contract.LOG_PREFIX_RE.match(prefix)
    if named is None or _KIND_OF_GROUP.get(record.group) != named.group("kind"):
        return None
    packet = _packet(record.payload)
    if packet is None:
        return None
    src, dst, proto, dport = packet
    # the same rule as the kernel log line: an output interface means the packet was leaving (egress)
    return Event(named.group("kind"), int(named.group("id")), "egress" if record.outdev else "ingress", src, dst,
                 proto, dport)


class NflogReader:
    """A netlink socket bound to the contract's NFLOG groups (``groups``: kinds, all three by default).

    Binding needs CAP_NET_ADMIN in the socket's network namespace. ``events()`` yields an Event per valid record
    and counts the others in ``malformed`` (and the kernel's reports of records lost to a full socket buffer in
    ``overruns``); ``close()`` ends it."""

    def __init__(self, kinds=contract.LOG_KINDS, timeout=1.0):
        self.groups = [contract.NFLOG_GROUP[kind] for kind in kinds]
        self.records = 0
        self.malformed = 0
        self.overruns = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, 0))
            self.sock.settimeout(timeout)
            seq = 1
            for group in self.groups:
                self._request(config_message(group, [(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND))], seq),
                              group, "bind")
                mode = struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)
                self._request(config_message(group, [(NFULA_CFG_MODE, mode)], seq + 1), group, "configure")
                seq += 2
        except BaseException:
            self.sock.close()
            raise

    def _request(self, message, group, what):
        self.sock.send(message)
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AgentError("NFLOG: the kernel did not answer the %s of group %d" % (what, group))
            for kind, _flags, payload in messages(data):
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code:
                        raise AgentError("NFLOG: cannot %s group %d (%s): the drop log needs CAP_NET_ADMIN and no "
                                         "other listener on the group" % (what, group, os.strerror(code)))
                    return

    def events(self, stop=None, tick=None):
        """Yield the Event of each valid record until ``stop`` (a threading.Event) is set; ``tick()`` is called
        after each datagram and at least once per ``timeout`` (for a caller's periodic work)."""
        while stop is None or not stop.is_set():
            if tick is not None:
                tick()
            try:
                data = self.sock.recv(1 << 17)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped records we were too slow for; go on
                    self.overruns += 1
                    continue
                raise
            for kind, _flags, payload in messages(data):
                if kind != NFULNL_MSG_PACKET:
                    continue
                record = parse_record(payload)
                event = record_event(record) if record is not None else None
                if event is None:
                    self.malformed += 1
                    continue
                self.records += 1
                yield event

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
