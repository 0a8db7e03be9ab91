"""The host reads the drop log's audit lines of the discovery window from the runtime logs."""

import calendar
import time

from ansible_collections.mseg.fleet.plugins.module_utils.host import auditlog

LINES = [
    "2026-12-06T02:59:59Z INFO Policy Audit: ID=0 src=10.0.2.1 dst=10.0.3.1 proto=tcp dport=5432 dir=ingress",
    "2026-12-06T03:00:00Z INFO Policy Audit: ID=0 src=10.0.2.1 dst=10.0.3.1 proto=tcp dport=5432 dir=ingress",
    "2026-12-06T03:00:01Z INFO Policy Drop: ID=0 src=10.0.2.1 dst=10.0.3.1 proto=tcp dport=22 dir=ingress",
    "2026-12-06T03:00:02Z INFO drop log: collecting on db-01 from NFLOG groups 2710,2711,2712 (1 record(s), 0 "
    "malformed, 0 overrun(s))",
    "2026-12-06T03:00:03Z INFO Policy Audit: ID=0 src=10.0.2.1 dst=10.0.3.1 proto=tcp dport=5432 dir=ingress junk",
    "2026-12-06T03:10:00Z INFO Policy Audit: ID=1030 src=10.0.9.1 dst=10.0.3.1 proto=icmp dir=ingress",
    "2026-12-06T03:10:01Z INFO Policy Audit: ID=0 src=10.0.2.1 dst=10.0.3.1 proto=tcp dport=5432 dir=ingress",
]
START = calendar.timegm(time.strptime("2026-12-06T03:00:00", "%Y-%m-%dT%H:%M:%S")) + 0.7
END = START + 600


def test_only_the_audit_lines_of_the_window(tmp_path):
    agent = tmp_path / "agent.log"
    agent.write_text("\n".join(LINES) + "\n")
    lines, overflow, unreadable = auditlog.window_lines(START, END, paths=[str(agent), str(tmp_path / "none.log")])
    assert lines == [LINES[1], LINES[5]]
    assert (overflow, unreadable) == (0, [])
    assert auditlog.window_time(START) == "2026-12-06T03:00:00Z"


def test_bounded_and_an_unreadable_log_is_named(tmp_path):
    agent = tmp_path / "agent.log"
    agent.write_text("\n".join(LINES) + "\n")
    directory = tmp_path / "droplog.log"
    directory.mkdir()
    lines, overflow, unreadable = auditlog.window_lines(START, END + 1, paths=[str(agent), str(directory)], limit=1)
    assert lines == [LINES[1]]
    assert overflow == 2
    assert unreadable == ["%s: Is a directory" % directory]
