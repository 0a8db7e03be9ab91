"""The observe report: kernel log lines to a summary per rule and per label pair."""

from ansible_collections.mseg.fleet.plugins.module_utils.compile.observe import summarise, to_csv
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet

INGRESS = ("[ 12.3] [MSEG-AUDIT] ID=30 IN=eth0 OUT= MAC=aa:bb SRC=10.0.1.2 DST=10.0.2.1 LEN=60 TOS=0x00 "
           "PREC=0x00 TTL=64 ID=4242 DF PROTO=TCP SPT=40000 DPT=8080 WINDOW=64240 RES=0x00 SYN URGP=0")
EGRESS = ("[MSEG-AUDIT] ID=0 IN= OUT=eth0 SRC=fd00:0001:0000:0000:0000:0000:0000:0001 "
          "DST=fd00:0002:0000:0000:0000:0000:0000:0001 LEN=80 TC=0 HOPLIMIT=64 FLOWLBL=1 "
          "PROTO=UDP SPT=5000 DPT=53 LEN=40")
ICMP = "[MSEG-DROP] ID=0 IN=eth0 OUT= SRC=192.0.2.7 DST=10.0.3.1 LEN=84 TTL=64 ID=1 PROTO=ICMP TYPE=8 CODE=0"


def test_summary_per_rule_and_label_pair(load_fleet):
    data = load_fleet()
    fleet = compile_fleet(data["policy"], data["hosts"])
    summary = summarise(fleet, [INGRESS, INGRESS, EGRESS, ICMP, "noise"])
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
