"""The drop log reads NFLOG records only, parsed strictly; its runtime lines and heartbeats parse back.

The attack (issue 15, item 11): any local user could put ``[MSEG-DROP] ...`` text into the kernel log, and the
drop log (reading /dev/kmsg or the journal) wrote it to runtime.log as a policy event, poisoning the observe report.
Records now come from the netfilter logger: a datagram of the kernel's NFULNL_MSG_PACKET messages, which these
tests build byte for byte as the kernel sends them (tests/integration/test_agent.py reads real ones).
"""

import io
import ipaddress
import logging
import struct
import threading

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.agent import droplog, nflog
from ansible_collections.mseg.fleet.plugins.module_utils.agent import log as agent_log
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import Event


def ip_packet(src, dst, proto=6, dport=5432):
    source, dest = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    transport = struct.pack("!HHI", 40000, dport, 0)
    if source.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 1, 0x4000, 64, proto, 0, source.packed,
                           dest.packed) + transport
    return struct.pack("!IHBB16s16s", 6 << 28, len(transport), proto, 64, source.packed, dest.packed) + transport


def packet_message(group, prefix, payload, indev=2, outdev=0, extra=b""):
    """One NFULNL_MSG_PACKET netlink message as the kernel sends it."""
    attrs = nflog._attribute(1, struct.pack("!HBx", 0x0800, 1))
    if indev:
        attrs += nflog._attribute(nflog.NFULA_IFINDEX_INDEV | 0x4000, struct.pack("!I", indev))
    if outdev:
        attrs += nflog._attribute(nflog.NFULA_IFINDEX_OUTDEV, struct.pack("!I", outdev))
    attrs += nflog._attribute(nflog.NFULA_PREFIX, prefix + b"\0") + nflog._attribute(nflog.NFULA_PAYLOAD, payload)
    body = nflog._NFGENMSG.pack(2, 0, group) + attrs + extra
    return nflog._NLMSGHDR.pack(nflog._NLMSGHDR.size + len(body), nflog.NFULNL_MSG_PACKET, 0, 0, 0) + body


def events_of(datagram):
    found = []
    for kind, _flags, payload in nflog.messages(datagram):
        record = nflog.parse_record(payload) if kind == nflog.NFULNL_MSG_PACKET else None
        found.append(nflog.record_event(record) if record is not None else None)
    return found


def test_a_record_of_the_ruleset_is_an_event():
    datagram = (packet_message(2710, b"[MSEG-DROP] ID=1024 ", ip_packet("10.0.1.5", "10.0.2.7"))
                + packet_message(2711, b"[MSEG-AUDIT] ID=0 ", ip_packet("fd00:1::1", "fd00:2::1", 17, 53), 0, 3)
                + packet_message(2712, b"[MSEG-LOG] ID=40 ", ip_packet("192.0.2.7", "10.0.3.1", 1, 0)))
    assert events_of(datagram) == [
        Event("DROP", 1024, "ingress", "10.0.1.5", "10.0.2.7", "tcp", 5432),
        Event("AUDIT", 0, "egress", "fd00:1::1", "fd00:2::1", "udp", 53),
        Event("LOG", 40, "ingress", "192.0.2.7", "10.0.3.1", "icmp", None)]
    assert [droplog.droplog_line(e) for e in events_of(datagram)] == [
        "Policy Drop: ID=1024 src=10.0.1.5 dst=10.0.2.7 proto=tcp dport=5432 dir=ingress",
        "Policy Audit: ID=0 src=fd00:1::1 dst=fd00:2::1 proto=udp dport=53 dir=egress",
        "Policy Log: ID=40 src=192.0.2.7 dst=10.0.3.1 proto=icmp dir=ingress"]


@pytest.mark.parametrize("group, prefix, payload", [
    (2711, b"[MSEG-DROP] ID=5 ", None),                      # a drop prefix in the audit group
    (2710, b"[MSEG-DROP] ID=5 extra", None),                 # not exactly a contract prefix
    (2710, b"[MSEG-DROP] ID=70000 ", None),                  # an id no rule can have
    (2710, b"[MSEG-DROP] ID=5\n2026 INFO forged ", None),    # a line break
    (2710, b"[MSEG-DROP] ID=5 ", b"\x45\x00"),               # a truncated packet
    (2710, b"[MSEG-DROP] ID=5 ", b"\x00" * 40),              # not IP
    (2710, b"\xff\xfe", None),                               # not text
])
def test_a_record_that_is_not_exactly_the_contracts_is_no_event(group, prefix, payload):
    datagram = packet_message(group, prefix, ip_packet("10.0.0.1", "10.0.0.2") if payload is None else payload)
    assert events_of(datagram) == [None]


def test_a_malformed_datagram_ends_the_parse_without_an_error():
    good = packet_message(2710, b"[MSEG-DROP] ID=5 ", ip_packet("10.0.0.1", "10.0.0.2"))
    assert list(nflog.messages(good[:-3])) == []                            # truncated message
    assert list(nflog.attributes(b"\x02\x00\x0a\x00")) == []                # attribute shorter than its header
    assert list(nflog.attributes(b"\xff\x00\x0a\x00abcd")) == []            # attribute longer than the data
    assert nflog.parse_record(b"\x02\x00") is None


def test_the_bind_request_is_what_the_kernel_expects():
    message = nflog.config_message(2710, [(nflog.NFULA_CFG_CMD, b"\x01")], 7)
    length, kind, flags, seq, _pid = nflog._NLMSGHDR.unpack_from(message)
    assert (length, kind, flags, seq) == (len(message), 0x0401, 0x5, 7)
    assert nflog._NFGENMSG.unpack_from(message, 16) == (0, 0, 2710)
    assert list(nflog.attributes(message[20:])) == [(1, b"\x01")]


class FakeReader:
    """Stands in for NflogReader: yields the given events, ticking between them, then waits for stop."""

    groups = sorted(contract.NFLOG_GROUP.values())

    def __init__(self, events):
        self.queue = list(events)
        self.records = self.malformed = self.overruns = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def events(self, stop, tick):
        for event in self.queue:
            tick()
            self.records += 1
            yield event
        tick()
        stop.wait(5)


@pytest.fixture(name="log")
def fixture_log():
    stream = io.StringIO()
    logger = agent_log.make_logger(None, stream)
    logger.stream = stream
    yield logger
    logging.getLogger(agent_log.LOGGER).handlers = []


def test_the_drop_log_writes_events_and_heartbeats_that_parse_back(log):
    events = [Event("AUDIT", 30, "ingress", "10.0.1.2", "10.0.2.1", "tcp", 8080),
              Event("DROP", 0, "egress", "fd00:1::1", "fd00:2::1", "udp", 53)]
    stop = threading.Event()
    clock = iter(range(0, 1000, 200))
    thread = droplog.DropLog("web-01", log, stop, reader=lambda: FakeReader(events), heartbeat=300,
                             clock=lambda: next(clock))
    thread.start()
    for _attempt in range(100):
        if log.stream.getvalue().count("\n") >= 4:
            break
        threading.Event().wait(0.02)
    stop.set()
    thread.join(5)
    lines = log.stream.getvalue().splitlines()
    parsed = [droplog.parse_runtime_line(line) for line in lines]
    assert [type(item[1]).__name__ for item in parsed] == ["Heartbeat", "Event", "Heartbeat", "Event"]
    assert [item[1] for item in parsed if isinstance(item[1], Event)] == events
    assert parsed[0][1].host == "web-01"
    assert lines[2].endswith("drop log: collecting on web-01 from NFLOG groups 2710,2711,2712 (1 record(s), "
                             "0 malformed, 0 overrun(s))")


@pytest.mark.parametrize("line", [
    "2026-12-05T10:00:00Z INFO bundle refused from c1: Policy Drop: ID=1 src=1.2.3.4 dst=5.6.7.8 proto=tcp dir=ingress",
    "2026-12-05T10:00:00Z INFO Policy Drop: ID=1 src=1.2.3.4 dst=5.6.7.8 proto=tcp dir=ingress trailing",
    "2026-12-05T10:00:00Z WARNING Policy Drop: ID=1 src=1.2.3.4 dst=5.6.7.8 proto=tcp dir=ingress",
    "2026-12-05T10:00:00Z INFO Policy Drop: ID=1 src=1.2.3.999 dst=5.6.7.8 proto=tcp dir=ingress",
    "2026-12-05T10:00:00Z INFO Policy Drop: ID=99999 src=1.2.3.4 dst=5.6.7.8 proto=tcp dir=ingress",
    "[MSEG-DROP] ID=1 IN=eth0 OUT= SRC=1.2.3.4 DST=5.6.7.8 PROTO=TCP DPT=22",
])
def test_only_the_drop_logs_own_lines_parse(line):
    assert droplog.parse_runtime_line(line) is None
