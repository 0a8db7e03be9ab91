"""The discovery collector (host/discover.py): netlink parsing, counting each connection once, listening sockets,
the records file the engine reads."""

import ast
import inspect
import io
import socket
import struct

from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import read_csv
from ansible_collections.mseg.fleet.plugins.module_utils.host import discover as collector


def _attr(kind, payload, nested=False):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind | (0x8000 if nested else 0)) + payload + b"\0" * ((4 - length % 4) % 4)


def _entry(ident, src, dst, proto, sport, dport, family=socket.AF_INET):
    base = 1 if family == socket.AF_INET else 3
    ips = _attr(base, socket.inet_pton(family, src)) + _attr(base + 1, socket.inet_pton(family, dst))
    ports = _attr(1, bytes([proto]))
    if sport is not None:
        ports += _attr(2, struct.pack("!H", sport)) + _attr(3, struct.pack("!H", dport))
    orig = _attr(1, _attr(1, ips, True) + _attr(2, ports, True), True)
    reply = _attr(2, _attr(1, ips, True), True)          # parsed past, never read
    body = struct.pack("=BBH", family, 0, 0) + orig + reply + _attr(12, struct.pack("!I", ident))
    return struct.pack("=IHHII", 16 + len(body), 0x100, 2, 1, 0) + body


def _done():
    return struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0" * 4


def test_a_dump_is_parsed_into_ids_and_original_tuples():
    data = (_entry(7, "10.0.1.1", "10.0.2.1", 6, 40000, 8080)
            + _entry(8, "fd00::1", "fd00::2", 17, 5000, 53, socket.AF_INET6)
            + _entry(9, "10.0.1.1", "10.0.2.1", 1, None, None) + _done())
    items = list(collector.parse_messages(data))
    assert items == [(7, ("10.0.1.1", "10.0.2.1", 6, 40000, 8080)), (8, ("fd00::1", "fd00::2", 17, 5000, 53)),
                     (9, ("10.0.1.1", "10.0.2.1", 1, None, None)), True]


def test_a_netlink_error_is_one_clear_message():
    data = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    try:
        list(collector.parse_messages(data))
    except collector.CollectError as exc:
        assert "refused the conntrack dump: Operation not permitted" in str(exc)
    else:
        raise AssertionError("no error")


def test_each_connection_counts_once_while_it_lives_and_the_bound_holds():
    c = collector.Collector(max_flows=2)
    web_app = ("10.0.1.1", "10.0.2.1", 6, 40000, 8080)
    c.sample([(1, web_app), (2, ("10.0.1.1", "10.0.2.1", 6, 40001, 8080))], {("tcp", 8080)})
    c.sample([(1, web_app), (3, ("10.0.1.1", "10.0.2.1", 6, 40002, 8080))], set())      # 1 again: not counted
    c.sample([(4, ("10.0.2.1", "10.0.3.1", 6, 50000, 5432)),                            # a second flow
              (5, ("10.0.9.9", "10.0.2.1", 1, None, None)),                             # a third: over the bound
              (6, ("127.0.0.1", "127.0.0.1", 6, 1, 8080)), (7, ("10.0.2.1", "10.0.2.1", 6, 1, 22))], set())
    assert c.counts == {("10.0.1.1", "10.0.2.1", "tcp", 8080): 3, ("10.0.2.1", "10.0.3.1", "tcp", 5432): 1}
    assert c.overflow == 1 and c.samples == 3
    rows = c.rows({"10.0.2.1"})
    # listening is known for what this host (10.0.2.1) receives only; it listened on 8080 in the first sample
    assert rows == [("10.0.1.1", "10.0.2.1", "tcp", "8080", "3", "true"),
                    ("10.0.2.1", "10.0.3.1", "tcp", "5432", "1", "")]
    c2 = collector.Collector(max_flows=10)
    c2.sample([(1, ("10.0.9.9", "10.0.2.1", 6, 1000, 9999)), (2, ("10.0.9.9", "10.0.2.1", 1, None, None))], set())
    assert c2.rows({"10.0.2.1"}) == [("10.0.9.9", "10.0.2.1", "icmp", "", "1", ""),
                                     ("10.0.9.9", "10.0.2.1", "tcp", "9999", "1", "false")]


def test_listening_sockets_are_read_from_proc_net(tmp_path):
    tcp = tmp_path / "tcp"
    tcp.write_text("  sl  local_address rem_address   st\n"
                   "   0: 00000000:1F90 00000000:0000 0A 0\n"          # 8080 listening
                   "   1: 0100007F:9C40 0100007F:1F90 01 0\n")         # an established client socket
    udp = tmp_path / "udp"
    udp.write_text("  sl  local_address rem_address   st\n   0: 00000000:0035 00000000:0000 07 0\n")
    files = (("tcp", str(tcp), "0A"), ("udp", str(udp), "07"), ("tcp", str(tmp_path / "absent"), "0A"))
    assert collector.listening_ports(files) == {("tcp", 8080), ("udp", 53)}


def test_the_records_file_is_what_the_engine_reads(tmp_path):
    ticks = iter([0.0, 0.0, 10.0])
    dumps = iter([[(1, ("10.0.1.1", "10.0.2.1", 6, 40000, 8080))],
                  [(1, ("10.0.1.1", "10.0.2.1", 6, 40000, 8080)), (2, ("10.0.1.1", "10.0.2.1", 6, 40001, 8080))]])
    slept = []
    out = tmp_path / "records.csv"
    status = collector.run(10, 5, 100, str(out), clock=lambda: next(ticks), sleep=slept.append,
                           dump=lambda: next(dumps), listen=lambda: {("tcp", 8080)})
    assert status["samples"] == 2 and status["finished"] and slept == [5.0]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    flows = read_csv(io.StringIO(out.read_text()), source="records.csv")
    assert flows.problems == [] and flows.records == 1
    assert flows.counts == {("10.0.1.1", "10.0.2.1", "tcp", 8080): 2}
    assert flows.listening == {}   # unknown: 10.0.2.1 is not this host, so the collector cannot tell


def test_the_collector_is_a_standalone_script():
    """The module writes this file's source to the host and runs it there: stdlib imports only."""
    tree = ast.parse(inspect.getsource(collector))
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert all(name.split(".")[0] in ("argparse", "errno", "json", "os", "socket", "struct", "sys", "time",
                                      "__future__") for name in names), names
