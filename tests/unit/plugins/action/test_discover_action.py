"""The discover action's merge of the hosts' records: each connection counted once, from its receiver."""

import pytest

from ansible_collections.mseg.fleet.plugins.action.discover import HEADER, host_addresses, merge_records
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError

FLEET = {"web-01": {"addresses": ["10.0.1.1/32"]}, "app-01": {"ansible_host": "10.0.2.1"},
         "db-01": {"addresses": ["10.0.3.1", "fd00::31"]}}


def test_host_addresses_follow_the_compiler_mseg_addresses_else_ansible_host():
    assert {str(a) for a in host_addresses(FLEET["web-01"])} == {"10.0.1.1"}
    assert {str(a) for a in host_addresses(FLEET["app-01"])} == {"10.0.2.1"}
    assert {str(a) for a in host_addresses({"addresses": ["10.0.0.0/24", "junk", "FD00:0::31"]})} == {"fd00::31"}


def test_a_connection_between_two_collecting_hosts_is_counted_from_the_receiver():
    records = {
        # web-01 opened to app-01 (which collected: its own line counts) and to db-01 (which did not collect)
        "web-01": HEADER + "\n10.0.1.1,10.0.2.1,tcp,8080,40,\n10.0.1.1,10.0.3.1,tcp,5432,3,\n",
        "app-01": HEADER + "\n10.0.1.1,10.0.2.1,tcp,8080,41,true\n10.0.9.9,10.0.2.1,tcp,22,1,false\n",
    }
    merged, twice = merge_records(records, FLEET)
    assert twice == 1
    assert merged == (HEADER + "\n10.0.1.1,10.0.2.1,tcp,8080,41,true\n10.0.9.9,10.0.2.1,tcp,22,1,false\n"
                      "10.0.1.1,10.0.3.1,tcp,5432,3,\n")


def test_records_with_another_header_are_one_clear_message():
    with pytest.raises(MsegError) as caught:
        merge_records({"web-01": "a,b\n1,2\n"}, FLEET)
    assert "records of web-01: the header line is 'a,b'" in str(caught.value)


def test_settings_given_with_e_on_the_command_line_are_read_as_the_engine_wants_them():
    from ansible_collections.mseg.fleet.plugins.action.discover import from_command_line
    assert from_command_line("min_count", "20") == 20 and from_command_line("min_count", 20) == 20
    assert from_command_line("group_by", "role, zone") == ["role", "zone"]
    assert from_command_line("ephemeral_ports", "32768-60999") == "32768-60999"
    assert from_command_line("min_count", "many") == "many"      # judged (and refused) by the engine


def test_a_collector_that_missed_part_of_the_window_or_of_its_flows_is_named():
    from ansible_collections.mseg.fleet.plugins.action.discover import incomplete
    status = {"web-01": {"overflow": 0, "finished": True, "samples": 3, "max_flows": 10},
              "app-01": {"overflow": 7, "finished": True, "samples": 3, "max_flows": 10},
              "db-01": {"overflow": 0, "finished": False, "samples": 1, "max_flows": 10}}
    assert incomplete(status) == {
        "app-01": "7 connection(s) not kept: max_flows (10) distinct flows reached; raise mseg_discover_max_flows",
        "db-01": "the collector stopped before the end of the window (1 sample(s))"}


def _summary(**audit):
    no_audit = {"lines": 0, "used": 0, "outside_window": 0, "rejected": 0, "problems": [], "no_window": [],
                "flows_added": 0, "counts_raised": 0, "overflow": {}, "unreadable": {}}
    return {"hosts": {"collected": ["web-01"], "not_collected": {}, "incomplete": {}}, "records": 0, "malformed": 0,
            "flows_kept": 0, "rules": 0, "left_out": {}, "uncovered": 0, "closed_pairs": 0, "audit": dict(no_audit, **audit),
            "pcaps": {"files": [], "records": 0, "problems": []},
            "current_would_drop": None, "current_unused_rules": None, "notes": []}


def test_an_empty_window_is_said_in_the_summary():
    from ansible_collections.mseg.fleet.plugins.action.discover import format_summary
    lines = format_summary(_summary(), {"rules": []})
    assert lines[1].startswith("EMPTY: no connection was recorded")
    summary = _summary()
    summary["records"] = 5
    assert not any(line.startswith("EMPTY") for line in format_summary(summary, {"rules": []}))


def test_the_audit_records_are_said_in_the_summary_and_count_as_a_window_with_traffic():
    from ansible_collections.mseg.fleet.plugins.action.discover import audit_records, format_summary
    from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import Flows
    line = "2026-12-06T03:0%d:00Z INFO Policy Audit: ID=0 src=10.0.1.1 dst=10.0.3.1 proto=tcp dport=5432 dir=ingress"
    flows = Flows()
    audit = audit_records({"db-01": {"from": "2026-12-06T03:01:00Z", "to": "2026-12-06T03:05:00Z", "overflow": 4,
                                     "lines": [line % 0, line % 1, line % 2, "junk"], "unreadable": []},
                           "web-01": {"lines": [line % 1]}}, flows)
    assert flows.counts == {("10.0.1.1", "10.0.3.1", "tcp", 5432): 2}
    assert audit["used"] == 2 and audit["outside_window"] == 1 and audit["rejected"] == 1
    assert audit["no_window"] == ["web-01"] and audit["overflow"] == {"db-01": 4} and audit["flows_added"] == 1
    lines = format_summary(_summary(**audit), {"rules": []})
    assert not any(text.startswith("EMPTY") for text in lines)
    assert lines[1:4] == [
        "audit records (observe mode): 2 used, 1 outside the window, 1 rejected; 1 flow(s) the collectors had not "
        "recorded, 0 counted higher",
        "audit records of db-01 line 4: not an audit record of the drop log: 'junk'",
        "INCOMPLETE audit of db-01: 4 audit line(s) of the window over the bound, not read"]


def test_the_captures_read_and_their_problems_are_in_the_summary():
    from ansible_collections.mseg.fleet.plugins.action.discover import format_summary
    summary = _summary()
    summary["records"] = 3
    summary["pcaps"] = {"files": [{"file": "a.pcap", "packets": 12}, {"file": "b.pcap", "packets": 0}], "records": 3,
                        "problems": ["b.pcap: not a pcap or pcapng capture (...); write one with tcpdump -w FILE"]}
    assert format_summary(summary, {"rules": []})[1:4] == [
        "capture a.pcap: 12 packet(s)", "capture b.pcap: 0 packet(s)",
        "CAPTURE b.pcap: not a pcap or pcapng capture (...); write one with tcpdump -w FILE"]


def test_without_dpkt_a_capture_is_one_message_on_how_to_install_it(monkeypatch):
    from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover import pcap
    from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import Flows
    monkeypatch.setattr(pcap, "dpkt", None)
    assert pcap.read_pcaps(["baseline.pcap"], Flows()) == ([], 0, [
        "mseg_discover_pcaps: reading a capture needs the Python package dpkt on the control node (pip install -r "
        "requirements.txt, or dpkt in the execution environment)"])
    assert pcap.read_pcaps([], Flows()) == ([], 0, [])
