"""Probes and listeners exchange real packets on this machine's loopback interface."""

import errno
import os
import socket
import time

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.host import probe


def _free_port(kind):
    sock = socket.socket(socket.AF_INET6, kind)
    sock.bind(("::", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def listener(tmp_path):
    tcp, udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    pidfile = str(tmp_path / "listener.pid")
    pid, listening, busy = probe.start_listener(["tcp/%d" % tcp, "udp/%d" % udp, "icmp"], 30, "db-01", pidfile)
    yield {"tcp": tcp, "udp": udp, "pid": pid, "listening": listening, "busy": busy, "pidfile": pidfile}
    probe.stop_listener(pidfile)


@pytest.mark.parametrize("spec, parsed", [("tcp/1", ("tcp", 1)), ("udp/65535", ("udp", 65535)),
                                          ("icmp", ("icmp", None))])
def test_parse_port(spec, parsed):
    assert probe.parse_port(spec) == parsed


@pytest.mark.parametrize("spec", ["tcp/0", "tcp/65536", "sctp/1", "tcp", "22", "", None, "tcp/-1"])
def test_bad_ports_are_refused(spec):
    with pytest.raises(probe.ProbeError, match="invalid port"):
        probe.parse_port(spec)


def test_listener_answers_tcp_and_udp_with_its_name(listener):
    assert listener["listening"] == sorted(["tcp/%d" % listener["tcp"], "udp/%d" % listener["udp"]])
    assert listener["busy"] == []
    for address in ("127.0.0.1", "::1"):
        tcp = probe.probe(address, "tcp/%d" % listener["tcp"], 2)
        udp = probe.probe(address, "udp/%d" % listener["udp"], 2)
        assert (tcp["result"], tcp["reachable"], tcp["responder"]) == ("open", True, "db-01")
        assert (udp["result"], udp["reachable"], udp["responder"]) == ("open", True, "db-01")


def test_closed_ports_are_refused_not_open(listener):
    closed_tcp, closed_udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    assert probe.probe("127.0.0.1", "tcp/%d" % closed_tcp, 1)["result"] == "refused"
    assert probe.probe("127.0.0.1", "udp/%d" % closed_udp, 1)["result"] == "refused"


def test_a_silent_udp_service_is_a_timeout():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        started = time.time()
        result = probe.probe("127.0.0.1", "udp/%d" % sock.getsockname()[1], 0.3)
        assert result["result"] == "timeout" and result["reachable"] is False
        assert time.time() - started < 2
    finally:
        sock.close()


def test_a_reply_without_our_nonce_does_not_count():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client_result = {}

    import threading

    def answer_wrongly():
        _data, peer = server.recvfrom(512)
        server.sendto(b"MSEG-PROBE other udp/1 not-the-nonce", peer)

    thread = threading.Thread(target=answer_wrongly)
    thread.start()
    try:
        client_result = probe.probe("127.0.0.1", "udp/%d" % port, 0.5)
    finally:
        thread.join()
        server.close()
    assert client_result["result"] == "timeout"


def test_a_foreign_tcp_service_is_open_without_responder():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        result = probe.probe("127.0.0.1", "tcp/%d" % server.getsockname()[1], 1)
        assert result["result"] == "open" and result["responder"] is None
    finally:
        server.close()


def test_busy_ports_are_reported_and_left_alone(tmp_path):
    taken = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    taken.bind(("::", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    pidfile = str(tmp_path / "l.pid")
    try:
        _pid, listening, busy = probe.start_listener(["tcp/%d" % port], 10, "x", pidfile)
        assert listening == [] and busy == ["tcp/%d" % port]
    finally:
        probe.stop_listener(pidfile)
        taken.close()


def test_listener_is_detached_replaced_and_stopped(listener):
    pid = listener["pid"]
    assert probe.running_listener(listener["pidfile"]) == pid
    # Not our child: it was forked twice into its own session.
    assert os.getsid(pid) != os.getsid(0)
    new_pid, _listening, _busy = probe.start_listener(["tcp/%d" % listener["tcp"]], 30, "db-02", listener["pidfile"])
    assert new_pid != pid
    assert probe.running_listener(listener["pidfile"]) == new_pid
    assert probe.probe("127.0.0.1", "tcp/%d" % listener["tcp"], 2)["responder"] == "db-02"
    assert probe.stop_listener(listener["pidfile"]) is True
    assert probe.running_listener(listener["pidfile"]) is None
    assert probe.probe("127.0.0.1", "tcp/%d" % listener["tcp"], 1)["result"] == "refused"
    assert probe.stop_listener(listener["pidfile"]) is False


def test_listener_exits_after_its_duration(tmp_path):
    pidfile = str(tmp_path / "short.pid")
    port = _free_port(socket.SOCK_STREAM)
    probe.start_listener(["tcp/%d" % port], 1, "x", pidfile)
    deadline = time.time() + 5
    while probe.running_listener(pidfile) and time.time() < deadline:
        time.sleep(0.1)
    assert probe.running_listener(pidfile) is None


@pytest.mark.parametrize("code, outcome", [(errno.EPERM, probe.TIMEOUT), (errno.ETIMEDOUT, probe.TIMEOUT),
                                           (errno.ECONNREFUSED, probe.REFUSED),
                                           (errno.EHOSTUNREACH, probe.UNREACHABLE)])
def test_errors_that_mean_dropped_refused_or_unreachable_are_outcomes(code, outcome):
    """EPERM is what a UDP send gets when the sender's own ruleset drops the packet on its way out: a drop."""
    assert probe._classify(OSError(code, os.strerror(code))) == outcome  # pylint: disable=protected-access


def test_other_errors_are_not_taken_for_outcomes():
    with pytest.raises(OSError):
        probe._classify(OSError(errno.EBADF, os.strerror(errno.EBADF)))  # pylint: disable=protected-access
