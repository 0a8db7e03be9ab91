"""common.ports: the one parser of tcp/8080, tcp/8000-8099, udp, icmp (policy, trace, probes, mseg trace)."""

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import (
    PortSpec, normalise_ports, parse_port, parse_single_port,
)


@pytest.mark.parametrize("text, spec", [
    ("tcp/8080", PortSpec("tcp", 8080, 8080)), ("TCP/80-90", PortSpec("tcp", 80, 90)),
    ("udp", PortSpec("udp", None, None)), ("icmp", PortSpec("icmp", None, None)),
    ("vrrp", PortSpec("proto", 112, 112)), ("proto/112", PortSpec("proto", 112, 112)),
    ("GRE", PortSpec("proto", 47, 47)), ("proto/132", PortSpec("proto", 132, 132)),
])
def test_good_ports(text, spec):
    assert parse_port(text) == (spec, None)


@pytest.mark.parametrize("text, reason", [
    (8080, "needs a protocol; write tcp/8080 or udp/8080"),
    ("sctp/1", "has an unknown protocol 'sctp'; use one of tcp, udp, icmp, ah, esp, gre, vrrp, proto/<number>"),
    ("proto/17", "names protocol 17, which the policy writes as udp (with its ports)"),
    ("tcp/0", "has a port outside 1-65535"),
    ("tcp/90-80", "has a range whose start is above its end; write tcp/80-90"),
    ("icmp/8", "icmp has no ports; write icmp"),
    ("tcp:80", "is not of the form tcp/8080, tcp/8000-8099, udp/53 or icmp"),
])
def test_bad_ports_say_why(text, reason):
    assert parse_port(text) == (None, reason)


def test_a_single_port_is_one_port_or_icmp():
    assert parse_single_port("tcp/5432")[0] == PortSpec("tcp", 5432, 5432)
    assert parse_single_port("icmp")[0].single
    assert parse_single_port("tcp/1-2") == (None, "must name one port, e.g. tcp/5432, udp/53 or icmp")
    assert parse_single_port("udp") == (None, "must name one port, e.g. tcp/5432, udp/53 or icmp")


def test_ranges_are_merged_per_protocol():
    specs = [parse_port(t)[0] for t in ("tcp/10-20", "tcp/21", "tcp/5", "udp/53", "udp")]
    assert [str(s) for s in normalise_ports(specs)] == ["tcp/5", "tcp/10-21", "udp"]


def test_an_ip_protocol_is_written_by_its_contract_word_and_read_back():
    specs = [parse_port(t)[0] for t in ("proto/112", "esp", "proto/51", "proto/132")]
    assert [str(s) for s in normalise_ports(specs)] == ["proto/50-51", "vrrp", "proto/132"]
    assert [parse_port(str(s))[0] for s in normalise_ports(specs)] == list(normalise_ports(specs))
    assert parse_single_port("vrrp", ip_protocols=True)[0].matches("proto", 112)
    assert parse_single_port("vrrp") == (None, "names an IP protocol; a probe sends tcp/<port>, udp/<port> or icmp")
