"""Discovery's pcap input: a baseline capture becomes flow records; a bad capture is said, the rest still read.

The captures are written here with dpkt (no binary checked in)."""

import socket
import struct

import dpkt   # a control-node requirement (requirements.txt): missing, these tests fail rather than skip

from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.pcap import read_pcaps
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import Flows

SYN, ACK, RST = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST


def ip(src, dst, segment):
    if ":" in src:
        nxt = {dpkt.tcp.TCP: 6, dpkt.udp.UDP: 17}[type(segment)]
        packet = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                              nxt=nxt, hlim=64, data=segment, plen=len(bytes(segment)))
        return packet, dpkt.ethernet.ETH_TYPE_IP6
    proto = {dpkt.tcp.TCP: 6, dpkt.udp.UDP: 17, dpkt.icmp.ICMP: 1}.get(type(segment), 112)
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=segment), \
        dpkt.ethernet.ETH_TYPE_IP


def tcp(src, sport, dst, dport, flags, payload=b""):
    return ip(src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=payload))


def udp(src, sport, dst, dport):
    return ip(src, dst, dpkt.udp.UDP(sport=sport, dport=dport, data=b"q"))


def ping(src, dst, ident, kind=8):
    echo = dpkt.icmp.ICMP.Echo(id=ident, seq=1, data=b"x")
    return ip(src, dst, dpkt.icmp.ICMP(type=kind, code=0, data=echo))


def ethernet(packet_and_type):
    packet, kind = packet_and_type
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=kind, data=packet))


def write(path, frames, linktype=dpkt.pcap.DLT_EN10MB):
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=linktype)
        for when, frame in enumerate(frames):
            writer.writepkt(frame, ts=1765000000 + when)
    return str(path)


BASELINE = [
    tcp("10.0.1.1", 40000, "10.0.2.1", 8080, SYN),
    tcp("10.0.1.1", 40000, "10.0.2.1", 8080, SYN),                     # retransmitted: the same connection
    tcp("10.0.2.1", 8080, "10.0.1.1", 40000, SYN | ACK),              # listening
    tcp("10.0.1.1", 40000, "10.0.2.1", 8080, ACK, b"GET /secret"),    # payload: never kept
    tcp("10.0.1.1", 40001, "10.0.2.1", 8080, SYN),
    tcp("10.0.9.9", 50001, "10.0.2.1", 23, SYN),
    tcp("10.0.2.1", 23, "10.0.9.9", 50001, RST | ACK),                # refused: not listening
    tcp("10.0.2.1", 51000, "10.0.3.1", 5432, ACK),                    # began before the capture: not counted
    tcp("127.0.0.1", 40000, "127.0.0.1", 8080, SYN),                  # loopback
    tcp("fd00::1", 40000, "fd00::2", 443, SYN),
    udp("10.0.1.1", 50000, "10.0.3.1", 53),
    udp("10.0.3.1", 53, "10.0.1.1", 50000),                           # the reply: listening
    udp("10.0.3.1", 123, "10.0.1.1", 45000),                          # a reply caught first: 123 is the server
    udp("10.0.1.1", 33000, "10.0.3.1", 40000),                        # both ephemeral: the first packet's way
    ping("10.0.9.1", "10.0.3.1", 7), ping("10.0.9.1", "10.0.3.1", 7), ping("10.0.9.1", "10.0.3.1", 8),
    ping("10.0.3.1", "10.0.9.1", 7, kind=0),                          # an echo reply is not a connection
    ip("10.0.5.1", "10.0.5.2", b"\x00" * 20),                         # VRRP (112)
]
EXPECTED = {
    ("10.0.1.1", "10.0.2.1", "tcp", 8080): 2,
    ("10.0.9.9", "10.0.2.1", "tcp", 23): 1,
    ("fd00::1", "fd00::2", "tcp", 443): 1,
    ("10.0.1.1", "10.0.3.1", "udp", 53): 1,
    ("10.0.1.1", "10.0.3.1", "udp", 123): 1,
    ("10.0.1.1", "10.0.3.1", "udp", 40000): 1,
    ("10.0.9.1", "10.0.3.1", "icmp", None): 2,
    ("10.0.5.1", "10.0.5.2", "proto", 112): 1,
}


def test_a_baseline_capture_becomes_exact_flow_records(tmp_path):
    path = write(tmp_path / "baseline.pcap", [ethernet(frame) for frame in BASELINE])
    flows = Flows()
    files, added, problems = read_pcaps([path], flows)
    assert (files, added, problems) == ([{"file": path, "packets": len(BASELINE)}], len(EXPECTED), [])
    assert flows.counts == EXPECTED
    assert flows.listening == {("10.0.1.1", "10.0.2.1", "tcp", 8080): True, ("10.0.9.9", "10.0.2.1", "tcp", 23): False,
                               ("10.0.1.1", "10.0.3.1", "udp", 53): True, ("10.0.1.1", "10.0.3.1", "udp", 123): True}
    assert flows.bad == 0


def test_tcpdump_i_any_linux_cooked_captures_are_read(tmp_path):
    packet, kind = tcp("10.0.1.1", 40000, "10.0.2.1", 8080, SYN)
    cooked = bytes(dpkt.sll.SLL(type=4, hrd=1, hlen=6, hdr=b"\x02" * 6 + b"\x00\x00", ethtype=kind, data=packet))
    packet6, kind6 = tcp("fd00::1", 40000, "fd00::2", 443, SYN)
    cooked2 = bytes(dpkt.sll2.SLL2(ethtype=kind6, intindex=2, hrd=1, type=0, hlen=6, hdr=b"\x02" * 6 + b"\x00\x00",
                                   data=packet6))
    v1 = write(tmp_path / "any.pcap", [cooked], linktype=113)
    v2 = write(tmp_path / "any2.pcap", [cooked2], linktype=276)   # what tcpdump 4.99 writes for -i any
    flows = Flows()
    assert read_pcaps([v1, v2], flows)[2] == []
    assert flows.counts == {("10.0.1.1", "10.0.2.1", "tcp", 8080): 1, ("fd00::1", "fd00::2", "tcp", 443): 1}


def test_a_malformed_capture_is_said_by_name_and_the_rest_still_read(tmp_path):
    good = write(tmp_path / "good.pcap", [ethernet(tcp("10.0.1.1", 40000, "10.0.2.1", 8080, SYN))])
    text = tmp_path / "notes.txt"
    text.write_text("not a capture at all\n")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(open(good, "rb").read() + b"\x00\x01\x02")       # a record header cut short
    odd = write(tmp_path / "usb.pcap", [b"\x00" * 40], linktype=189)
    flows = Flows()
    files, added, problems = read_pcaps([str(text), str(cut), odd, str(tmp_path / "gone.pcap"), good], flows)
    assert problems == [
        "%s: not a pcap or pcapng capture (it starts with b'not ', not with the magic number of either); write one with tcpdump -w FILE" % text,
        "%s: cut short after packet 1 (got 3, 16 needed at least); the packets before it are read" % cut,
        "%s: link type 189 is not supported; capture on Ethernet (1), Linux cooked v1 (113) or v2 (276), raw IP "
        "(12, 14, 101, 228, 229), e.g. tcpdump -i any -w FILE" % odd,
        "%s: cannot read: No such file or directory" % (tmp_path / "gone.pcap"),
    ]
    assert [item["packets"] for item in files] == [0, 1, 0, 0, 1]
    # cut.pcap holds good.pcap's SYN: the same connection in two captures (taken at both ends) counts once
    assert flows.counts == {("10.0.1.1", "10.0.2.1", "tcp", 8080): 1}
    assert added == 1


def test_a_packet_that_does_not_decode_is_skipped_and_counted(tmp_path):
    path = write(tmp_path / "broken.pcap", [b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x8100)[:1],
                                            ethernet(tcp("10.0.1.1", 40000, "10.0.2.1", 8080, SYN))])
    flows = Flows()
    problems = read_pcaps([path], flows)[2]
    assert len(problems) == 1 and problems[0].startswith("%s: packet 1 does not decode (" % path)
    assert flows.counts == {("10.0.1.1", "10.0.2.1", "tcp", 8080): 1}


def test_pcapng_captures_are_read(tmp_path):
    path = str(tmp_path / "baseline.pcapng")
    with open(path, "wb") as handle:
        writer = dpkt.pcapng.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        writer.writepkt(ethernet(tcp("10.0.1.1", 40000, "10.0.2.1", 8080, SYN)), ts=1765000000)
        writer.writepkt(ethernet(tcp("10.0.2.1", 8080, "10.0.1.1", 40000, SYN | ACK)), ts=1765000001)
    flows = Flows()
    assert read_pcaps([path], flows) == ([{"file": path, "packets": 2}], 1, [])
    assert flows.counts == {("10.0.1.1", "10.0.2.1", "tcp", 8080): 1}
    assert flows.listening == {("10.0.1.1", "10.0.2.1", "tcp", 8080): True}
