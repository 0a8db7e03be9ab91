"""common.logline: the one parser of the kernel's [MSEG-...] lines (the observe report and the agent's drop log)."""

from ansible_collections.mseg.fleet.plugins.module_utils.common.logline import parse_line

INGRESS = ("[ 12.3] [MSEG-AUDIT] ID=30 IN=eth0 OUT= MAC=aa:bb SRC=10.0.1.2 DST=10.0.2.1 LEN=60 TOS=0x00 "
           "PREC=0x00 TTL=64 ID=4242 DF PROTO=TCP SPT=40000 DPT=8080 WINDOW=64240 RES=0x00 SYN URGP=0")
EGRESS = ("[MSEG-AUDIT] ID=0 IN= OUT=eth0 SRC=fd00:0001:0000:0000:0000:0000:0000:0001 "
          "DST=fd00:0002:0000:0000:0000:0000:0000:0001 LEN=80 TC=0 HOPLIMIT=64 FLOWLBL=1 "
          "PROTO=UDP SPT=5000 DPT=53 LEN=40")
ICMP = "[MSEG-DROP] ID=0 IN=eth0 OUT= SRC=192.0.2.7 DST=10.0.3.1 LEN=84 TTL=64 ID=1 PROTO=ICMP TYPE=8 CODE=0"


def test_parse_lines():
    event = parse_line(INGRESS)
    assert (event.kind, event.rule, event.direction, event.src, event.dst, event.port) == (
        "AUDIT", 30, "ingress", "10.0.1.2", "10.0.2.1", "tcp/8080")
    # the kernel expands IPv6 addresses; they come back in the form the inventory uses
    assert parse_line(EGRESS)[:5] == ("AUDIT", 0, "egress", "fd00:1::1", "fd00:2::1")
    assert parse_line(EGRESS).port == "udp/53"
    assert parse_line(ICMP).port == "icmp"
    assert parse_line("kernel: eth0: link up") is None
