"""The controllers' per-source connection limit proven by packets (issue 15 item 9): a client without a certificate
holding connections open to the agent port gets no answer beyond the limit, while another source still connects;
observe counts what enforce would drop and drops nothing; the kernel's per-source counts are not drift. The ruleset goes through the checked load (parsed in a
scratch namespace, judged by the wire contract's allowlist, loaded as JSON), as on a real host."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), ".build", "collections"))

from netns import Fleet, available  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft, find_nft  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

HOLD = os.path.join(HERE, "hold_tcp.py")
AGENT_PORT = 8443
LIMIT = 3
POLICY = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": []}


def load(fleet, mode):
    hosts = {"ctl": {"addresses": [fleet.addr("ctl")], "mode": mode, "groups": ["controllers"]}}
    hosts.update({name: {"addresses": [fleet.addr(name)], "mode": "enforce"} for name in ("agent1", "agent2")})
    compiled = compile_fleet(POLICY, hosts, {"controller": {"hosts": ["ctl"], "settings": {
        "agent_port": AGENT_PORT, "operator_port": 443, "operators": [], "vip": "", "conn_limit": LIMIT}}})
    document = jsonform.checked(render_plan(compiled.plans["ctl"])[0], find_nft())
    fleet.run("ctl", ["nft", "-j", "-f", "-"], input=document)


def hold(fleet, name, count):
    """``count`` attempts from ``name`` to the controller's agent port, 1 s each; the process keeps the connections
    it made open until its stdin is closed. Returns (process, outcomes)."""
    proc = fleet.popen(name, [sys.executable, HOLD, "hold", fleet.addr("ctl"), str(AGENT_PORT), str(count), "1"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    outcomes = []
    for line in proc.stdout:
        if line.strip() == "holding":
            break
        outcomes.append(line.strip())
    return proc, outcomes


def release(*procs):
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=10)


def limited(fleet):
    listed = fleet.run("ctl", ["nft", "list", "counter", "inet", "mseg",
                               contract.limit_counter("controller.connlimit")]).stdout
    return int(listed.split("packets ")[1].split()[0])


def test_one_source_gets_no_answer_beyond_the_limit_while_another_still_connects():
    with Fleet(["ctl", "agent1", "agent2"], ipv6=False) as fleet:
        load(fleet, "enforce")
        server = fleet.popen("ctl", [sys.executable, HOLD, "serve", str(AGENT_PORT)], stdout=subprocess.PIPE,
                             text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            first, outcomes = hold(fleet, "agent1", LIMIT + 1)
            assert outcomes == ["connected"] * LIMIT + ["timeout"]
            second, others = hold(fleet, "agent2", 1)
            assert others == ["connected"]
            assert limited(fleet) >= 1
            # the kernel's per-source counts are in the live table, and are not drift for the apply engine
            counted = "%s ct count over %d" % (fleet.addr("agent1"), LIMIT)
            assert counted in fleet.run("ctl", ["nft", "-s", "list", "table", "inet", "mseg"]).stdout
            recorded = Nft(netns=fleet.ns("ctl")).listing()
            assert "ct count over %d }" % LIMIT in recorded and counted not in recorded
            release(first, second)

            load(fleet, "observe")
            before = limited(fleet)
            first, outcomes = hold(fleet, "agent1", LIMIT + 1)
            assert outcomes == ["connected"] * (LIMIT + 1)
            assert limited(fleet) == before + 1
            release(first)
        finally:
            server.kill()
            server.wait()
