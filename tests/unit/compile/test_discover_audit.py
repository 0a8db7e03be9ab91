"""Discovery's audit input: the drop log's audit lines of a window become flow records, judged strictly."""

from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.audit import add_audit, read_audit
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import read_csv

WINDOW = ("2026-12-06T03:00:00Z", "2026-12-06T03:15:00Z")
AUDIT = "%s INFO Policy Audit: ID=%d src=%s dst=%s proto=%s dir=%s"

DB = [
    AUDIT % ("2026-12-06T02:59:59Z", 0, "10.0.2.1", "10.0.3.1", "tcp dport=5432", "ingress"),   # before the window
    AUDIT % ("2026-12-06T03:00:00Z", 0, "10.0.2.1", "10.0.3.1", "tcp dport=5432", "ingress"),
    AUDIT % ("2026-12-06T03:01:00Z", 0, "10.0.2.1", "10.0.3.1", "tcp dport=5432", "ingress"),
    AUDIT % ("2026-12-06T03:02:00Z", 1030, "10.0.9.1", "10.0.3.1", "icmp", "ingress"),
    AUDIT % ("2026-12-06T03:15:00Z", 0, "2001:db8:0:0::1", "10.0.3.1", "udp dport=53", "ingress"),
    AUDIT % ("2026-12-06T03:15:01Z", 0, "10.0.2.1", "10.0.3.1", "tcp dport=5432", "ingress"),   # after it
    "2026-12-06T03:03:00Z INFO Policy Drop: ID=0 src=10.0.2.1 dst=10.0.3.1 proto=tcp dport=22 dir=ingress",
    "2026-12-06T03:03:00Z INFO Policy Audit: ID=0 src=10.0.2.1 dst=10.0.3.1 proto=tcp dport=99999 dir=ingress",
    "kernel: [MSEG-AUDIT] ID=0 SRC=10.0.2.1 DST=10.0.3.1 PROTO=TCP DPT=5432",
]
# the same connections seen from the client: its egress audited them too
APP = [AUDIT % ("2026-12-06T03:00:00Z", 0, "10.0.2.1", "10.0.3.1", "tcp dport=5432", "egress"),
       AUDIT % ("2026-12-06T03:05:00Z", 0, "10.0.2.1", "10.0.4.1", "tcp dport=8080", "egress")]


def test_lines_become_records_inside_the_window_only_and_strictly():
    flows, stats = read_audit({"db-01": DB, "app-01": APP}, {"db-01": WINDOW, "app-01": WINDOW})
    assert flows.counts == {
        ("10.0.2.1", "10.0.3.1", "tcp", 5432): 2,   # db-01 audited 2 in the window; app-01's 1 is the same ones
        ("10.0.9.1", "10.0.3.1", "icmp", None): 1,
        ("2001:db8::1", "10.0.3.1", "udp", 53): 1,
        ("10.0.2.1", "10.0.4.1", "tcp", 8080): 1,
    }
    assert flows.listening == {}
    assert stats == {
        "lines": 11, "used": 6, "outside_window": 2, "rejected": 3, "no_window": [],
        "problems": [
            "audit records of db-01 line 7: not an audit record of the drop log: %r" % DB[6],
            "audit records of db-01 line 8: not an audit record of the drop log: %r" % DB[7],
            "audit records of db-01 line 9: not an audit record of the drop log: %r" % DB[8],
        ]}


def test_a_host_without_a_window_gives_nothing():
    flows, stats = read_audit({"db-01": DB}, {})
    assert flows.counts == {}
    assert stats["no_window"] == ["db-01"] and stats["used"] == 0


def test_the_audit_raises_and_adds_flows_never_sums_them():
    flows = read_csv(["src,dst,proto,dport,count,listening",
                      "10.0.2.1,10.0.3.1,tcp,5432,1,true",
                      "10.0.2.1,10.0.4.1,tcp,8080,5,true"])
    audit, _stats = read_audit({"db-01": DB, "app-01": APP}, {"db-01": WINDOW, "app-01": WINDOW})
    assert add_audit(flows, audit) == (2, 1)
    assert flows.counts == {
        ("10.0.2.1", "10.0.3.1", "tcp", 5432): 2,   # raised from 1
        ("10.0.2.1", "10.0.4.1", "tcp", 8080): 5,   # the collector saw more: kept
        ("10.0.9.1", "10.0.3.1", "icmp", None): 1,  # added
        ("2001:db8::1", "10.0.3.1", "udp", 53): 1,  # added
    }
    assert flows.listening == {("10.0.2.1", "10.0.3.1", "tcp", 5432): True, ("10.0.2.1", "10.0.4.1", "tcp", 8080): True}
