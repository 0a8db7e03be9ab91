# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flow records from a packet capture: the baseline of hosts not yet managed (docs/discovery.md, "Packet captures").

The seed's first step is ``tcpdump -i any -w baseline.pcap``. A capture (pcap or pcapng; Ethernet, Linux cooked
v1/v2 as ``-i any`` writes, or raw IP) is read with dpkt, a maintained pure-Python packet parser (a control-node
dependency, requirements.txt), packet by packet; only addresses, protocol and ports are kept, never a payload:

* **TCP**: a SYN without ACK is a connection from its source to its destination port (each 4-tuple once, so a
  retransmitted SYN is not a second connection). The receiver was listening when a SYN-ACK came back, was not when
  only a RST did, else unknown (the capture saw one direction only). A connection whose SYN is not in the capture
  (it began before) is not counted: nothing tells its client from its server for sure.
* **UDP**: a conversation (the two address-port ends) is one connection. Its server port is the one outside
  ``ephemeral`` (the hosts' ``ip_local_port_range``, the engine's ``ephemeral_ports``) when exactly one of the two
  is; otherwise the destination port of its first packet in the capture. A reply from the server makes it listening.
* **ICMP**: an echo request (ping) is a connection, once per (source, destination, echo id); other ICMP (errors,
  replies) is not.
* **Other IP protocols** (VRRP, GRE, ESP ...): one connection per (source, destination, protocol), in the direction
  of the first packet.

The captures are read together: a connection in two of them (taken at both ends) counts once. Loopback and
fragments after the first are skipped. A file that is not a capture, or ends in the middle of a
record, is said with its name and what is wrong; what was read before is kept, and the other files are read.
Cost: one pass; memory grows with the distinct connections (4-tuples), not the packets.
"""

from __future__ import annotations

import ipaddress
import socket

try:
    import dpkt
except ImportError:  # pragma: no cover - read_pcaps says how to install it
    dpkt = None

_ICMP_ECHO = {(4, 8), (6, 128)}
_SUPPORTED = "Ethernet (1), Linux cooked v1 (113) or v2 (276), raw IP (12, 14, 101, 228, 229)"
MAX_PROBLEMS = 20


def _decoder(linktype):
    """The packet decoder of a capture's link type, or None when it is not supported."""
    if linktype == 1:
        return lambda buf: dpkt.ethernet.Ethernet(buf).data
    if linktype == 113:
        return lambda buf: dpkt.sll.SLL(buf).data
    if linktype == 276:
        return lambda buf: dpkt.sll2.SLL2(buf).data
    if linktype in (12, 14, 101, 228, 229):
        return lambda buf: (dpkt.ip6.IP6(buf) if buf[:1] and buf[0] >> 4 == 6 else dpkt.ip.IP(buf))
    return None


def _address(raw):
    """The compressed text of a packed address, None for loopback."""
    address = ipaddress.ip_address(raw)
    return None if address.is_loopback else address.compressed


class Capture(object):
    """Connections seen in one or more captures, before they become flow records."""

    def __init__(self, ephemeral=(32768, 60999)):
        self.ephemeral = ephemeral
        self.syn = {}        # (client, cport, server, sport) -> listening True/False/None
        self.udp = {}        # (client, cport, server, sport) -> listening
        self.udp_ends = {}   # frozenset of both ends -> the key in self.udp
        self.echo = set()    # (src, dst, echo id)
        self.other = set()   # (src, dst, protocol number)

    def _ephemeral(self, port):
        return self.ephemeral[0] <= port <= self.ephemeral[1]

    def packet(self, net):
        """Count one decoded network-layer packet (dpkt IP or IP6); anything else is ignored."""
        if isinstance(net, dpkt.ip.IP):
            if net.offset:
                return
            family, proto = 4, net.p
        elif isinstance(net, dpkt.ip6.IP6):
            family, proto = 6, getattr(net, "p", net.nxt)
        else:
            return
        src, dst = _address(net.src), _address(net.dst)
        if src is None or dst is None:
            return
        segment = net.data
        if isinstance(segment, dpkt.tcp.TCP):
            self._tcp(src, dst, segment)
        elif isinstance(segment, dpkt.udp.UDP):
            self._udp(src, dst, segment)
        elif isinstance(segment, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
            if (family, segment.type) in _ICMP_ECHO:
                echo = segment.data
                self.echo.add((src, dst, getattr(echo, "id", None)))
        elif proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) \
                and (dst, src, proto) not in self.other:
            self.other.add((src, dst, proto))

    def _tcp(self, src, dst, segment):
        flags = segment.flags
        if flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK:
            self.syn.setdefault((src, segment.sport, dst, segment.dport), None)
            return
        key = (dst, segment.dport, src, segment.sport)   # a reply of the server
        if key in self.syn:
            if flags & dpkt.tcp.TH_SYN:
                self.syn[key] = True
            elif flags & dpkt.tcp.TH_RST and self.syn[key] is None:
                self.syn[key] = False

    def _udp(self, src, dst, datagram):
        ends = frozenset(((src, datagram.sport), (dst, datagram.dport)))
        key = self.udp_ends.get(ends)
        if key is None:
            key = (src, datagram.sport, dst, datagram.dport)
            if self._ephemeral(datagram.dport) and not self._ephemeral(datagram.sport):
                key = (dst, datagram.dport, src, datagram.sport)   # a reply, caught after the request
            self.udp_ends[ends] = key
            self.udp[key] = None
        if (src, datagram.sport) == (key[2], key[3]):
            self.udp[key] = True

    def records(self):
        """``{(src, dst, proto, dport): [count, listening]}`` (listening: True wins, then False, then None)."""
        found = {}

        def add(key, listening):
            item = found.setdefault(key, [0, None])
            item[0] += 1
            if listening is not None and item[1] is not True:
                item[1] = listening

        for (client, _cport, server, port), listening in self.syn.items():
            add((client, server, "tcp", port), listening)
        for (client, _cport, server, port), listening in self.udp.items():
            add((client, server, "udp", port), listening)
        for src, dst, _echo in self.echo:
            add((src, dst, "icmp", None), None)
        for src, dst, proto in self.other:
            add((src, dst, str(proto), None), None)
        return found


_PCAP_MAGIC = (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")


def _reader(handle):
    head = handle.read(4)
    handle.seek(0)
    if head == b"\x0a\x0d\x0d\x0a":
        return dpkt.pcapng.Reader(handle)
    if head not in _PCAP_MAGIC:
        raise ValueError("it starts with %r, not with the magic number of either" % head)
    return dpkt.pcap.Reader(handle)


def read_capture(path, capture):
    """Read one capture into ``capture``; returns ``(packets, problems)``, never raises for a bad file."""
    problems = []
    packets = 0
    try:
        with open(path, "rb") as handle:
            try:
                reader = _reader(handle)
            except (ValueError, dpkt.UnpackError) as exc:
                return 0, ["%s: not a pcap or pcapng capture (%s); write one with tcpdump -w FILE" % (path, exc)]
            decode = _decoder(reader.datalink())
            if decode is None:
                return 0, ["%s: link type %d is not supported; capture on %s, e.g. tcpdump -i any -w FILE"
                           % (path, reader.datalink(), _SUPPORTED)]
            bad = 0
            try:
                for _when, buf in reader:
                    packets += 1
                    try:
                        net = decode(buf)
                    except (dpkt.UnpackError, ValueError, IndexError) as exc:
                        bad += 1
                        if bad == 1:
                            problems.append("%s: packet %d does not decode (%s): skipped" % (path, packets, exc))
                        continue
                    capture.packet(net)
            except (dpkt.UnpackError, ValueError) as exc:
                problems.append("%s: cut short after packet %d (%s); the packets before it are read"
                                % (path, packets, exc or "truncated record header"))
            if bad > 1:
                problems.append("%s: %d packets in all do not decode, skipped" % (path, bad))
    except (IOError, OSError) as exc:
        problems.append("%s: cannot read: %s" % (path, exc.strerror or exc))
    return packets, problems


def read_pcaps(paths, flows, ephemeral=(32768, 60999)):
    """Add the connections of the captures ``paths`` to ``flows`` (records.Flows); returns a summary per file
    (``{"file", "packets"}``), the records added and the problems (one per bad file, the rest still read)."""
    if not paths:
        return [], 0, []
    if dpkt is None:
        return [], 0, ["mseg_discover_pcaps: reading a capture needs the Python package dpkt on the control node "
                       "(pip install -r requirements.txt, or dpkt in the execution environment)"]
    capture = Capture(ephemeral)
    files = []
    problems = []
    for path in paths:
        packets, found = read_capture(path, capture)
        files.append({"file": path, "packets": packets})
        problems.extend(found)
    records = capture.records()
    for (src, dst, proto, port), (count, listening) in sorted(records.items(), key=lambda item: str(item[0])):
        flows.add("captures", src, dst, proto, port if port is not None else "", count, listening)
    return files, len(records), problems[:MAX_PROBLEMS]
