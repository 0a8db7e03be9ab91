"""Consecutive allow rules on the same ports are rendered as one verdict-map lookup: proven with packets.

Rules 1-3 overlap (2 repeats an address of 1; 3 is a prefix over everything), so the map must give each address
to the first rule naming it. Every source connects over IPv4 and IPv6; the rule whose counter moved must be the one
trace names, and a source no rule allows must be dropped.
"""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                ".build", "collections"))

from netns import Fleet, available  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import trace  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

SOURCES = ["a", "b", "c", "ext"]  # 10.77.0.1-4, fd00:77::1-4; db is 10.77.0.5


def _counters(fleet):
    listing = fleet.run("db", ["nft", "list", "counters", "table", "inet", "mseg"]).stdout
    return {int(m.group(1)): int(m.group(2))
            for m in re.finditer(r"counter rule_(\d+)_in \{\s*packets (\d+)", listing)}


def test_first_rule_naming_an_address_accepts_it_and_counts_it():
    with Fleet(SOURCES + ["db"]) as fleet:
        to = {"hosts": ["db"]}
        policy = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": [
            {"id": 1, "from": {"cidr": [fleet.addr("a"), fleet.addr6("a")]}, "to": to, "ports": ["tcp/8080"]},
            {"id": 2, "from": {"cidr": [fleet.addr("b"), fleet.addr("a"), fleet.addr6("b")]}, "to": to,
             "ports": ["tcp/8080"]},
            {"id": 3, "from": {"cidr": ["10.77.0.0/30", "fd00:77::/126"]}, "to": to, "ports": ["tcp/8080"]},
        ]}
        hosts = {"db": {"addresses": [fleet.addr("db"), fleet.addr6("db")], "mode": "enforce"}}
        compiled = compile_fleet(policy, hosts)
        text = render_plan(compiled.plans["db"])[0]
        assert text.count(" vmap @allow_1_in_v") == 2 and "@r2_in" not in text
        fleet.run("db", ["nft", "-f", "-"], input=text)
        fleet.listen("db", 8080, "tcp")
        for source in SOURCES:
            for family in (4, 6):
                before = _counters(fleet)
                connected = fleet.tcp_connect(source, "db", 8080, family=family, timeout=0.5, listen=False)
                moved = sorted(i for i, n in _counters(fleet).items() if n != before.get(i, 0))
                address = fleet.addr(source) if family == 4 else fleet.addr6(source)
                verdict = [r for r in trace(compiled, address, "db", "tcp/8080") if r.family == family][0]
                expected = [verdict.ingress.rule_id] if verdict.ingress.reason == "rule" else []
                assert (connected, moved) == (verdict.allowed, expected), (source, family)
        assert _counters(fleet)[1] and _counters(fleet)[2] and _counters(fleet)[3]
