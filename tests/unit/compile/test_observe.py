"""The observe report: the agents' drop log lines to a summary per rule and per label pair, and who collected."""

from ansible_collections.mseg.fleet.plugins.module_utils.compile.observe import format_summary, summarise, to_csv
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet

T = "2026-12-05T10:%02d:00Z"
INGRESS = T % 1 + " INFO Policy Audit: ID=30 src=10.0.1.2 dst=10.0.2.1 proto=tcp dport=8080 dir=ingress"
EGRESS = T % 2 + " INFO Policy Audit: ID=0 src=fd00:1::1 dst=fd00:2::1 proto=udp dport=53 dir=egress"
ICMP = T % 3 + " INFO Policy Drop: ID=0 src=192.0.2.7 dst=10.0.3.1 proto=icmp dir=ingress"
HEARTBEAT = (" INFO drop log: collecting on %s from NFLOG groups 2710,2711,2712 (0 record(s), 0 malformed, "
             "0 overrun(s))")
# what any local user could put into a kernel log line: never an event for the report
FORGED = "[MSEG-AUDIT] ID=30 IN=eth0 OUT= SRC=10.0.1.2 DST=10.0.2.1 LEN=60 PROTO=TCP SPT=1 DPT=8080"


def test_summary_per_rule_and_label_pair(load_fleet):
    data = load_fleet()
    fleet = compile_fleet(data["policy"], data["hosts"])
    summary = summarise(fleet, [INGRESS, INGRESS, EGRESS, ICMP, "noise", FORGED])
    assert summary["packets"] == 3 and summary["flows"] == 2
    seen = {tuple(h.split(" -> ")) + (p["port"],) for p in summary["pairs"] for h in p["hosts"]}
    assert ("web-01", "app-01", "udp/53") in seen
    assert [(r["rule"], r["name"], r["packets"], r["flows"]) for r in summary["rules"]] == [
        (30, "no-stage-to-prod", 2, 1), (0, "default", 1, 1)]
    assert summary["pairs"][0] == {"src": "env=stage,role=web", "dst": "env=prod,role=app", "port": "tcp/8080",
                                   "rule": 30, "direction": "ingress", "packets": 2, "hosts": ["web-02 -> app-01"]}
    assert to_csv(summary).splitlines()[1] == \
        '"env=stage,role=web","env=prod,role=app",tcp/8080,30,ingress,2,web-02 -> app-01'


def test_drops_are_reported_when_asked(load_fleet):
    data = load_fleet()
    fleet = compile_fleet(data["policy"], data["hosts"])
    summary = summarise(fleet, [ICMP], kinds=("DROP",))
    assert summary["pairs"][0]["src"] == "192.0.2.7 (outside the inventory)"


def test_no_events_is_told_from_nobody_collecting(load_fleet):
    data = load_fleet()
    fleet = compile_fleet(data["policy"], data["hosts"])
    nobody = summarise(fleet, [FORGED, "noise"])
    assert (nobody["packets"], nobody["collecting"]) == (0, [])
    assert format_summary(nobody)[0].startswith("nobody was collecting: no drop log heartbeat in the input")
    quiet = summarise(fleet, [T % 0 + HEARTBEAT % "app-01", T % 5 + HEARTBEAT % "app-01", T % 4 + HEARTBEAT % "db-01"])
    assert quiet["packets"] == 0 and quiet["collecting"] == [
        {"host": "app-01", "from": T % 0, "to": T % 5, "heartbeats": 2},
        {"host": "db-01", "from": T % 4, "to": T % 4, "heartbeats": 1}]
    assert format_summary(quiet)[:2] == ["0 packet(s) in 0 flow(s) would be dropped under enforce",
                                         "  collected on app-01 from %s to %s" % (T % 0, T % 5)]
