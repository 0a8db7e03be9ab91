"""System rules proven by packets: controllers in enforce under a policy that denies everything towards them still
take VRRP (IP protocol 112) from each other, and drop it from any other host (``other``: a machine on the same
network that is not a replica, as a compromised workload would be); trace agrees with every packet."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), ".build", "collections"))

from netns import Fleet, available  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import trace  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

RAW = os.path.join(HERE, "raw_ip.py")
VRRP = 112
POLICY = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": [
    {"id": 10, "name": "nothing-to-controllers", "from": {"any": True}, "to": {"group": "controllers"},
     "action": "deny"},
]}


def compile_for(fleet, system=True):
    hosts = {name: {"addresses": [fleet.addr(name)], "mode": "enforce", "groups": ["controllers"]}
             for name in ("ctl1", "ctl2")}
    declared = {"controller": {"hosts": ["ctl1", "ctl2"], "settings": {
        "agent_port": 8443, "operator_port": 443, "operators": [], "vip": ""}}} if system else None
    return compile_fleet(POLICY, hosts, declared)


def received(fleet, receiver, senders):
    """The senders whose VRRP datagram reached ``receiver``'s socket."""
    listener = fleet.popen(receiver, [sys.executable, RAW, "receive", str(VRRP), "1.5"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        for sender in senders:
            fleet.run(sender, [sys.executable, RAW, "send", str(VRRP), fleet.addr(receiver)])
        output, _err = listener.communicate(timeout=10)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    by_address = {fleet.addr(name): name for name in fleet.names}  # other is managed by nobody: it sends anything
    return {by_address[line.split()[1]] for line in output.splitlines() if line.startswith("from ")}


def test_vrrp_between_replicas_passes_enforce_and_nobody_else_s_does():
    with Fleet(["ctl1", "ctl2", "other"], ipv6=False) as fleet:
        compiled = compile_for(fleet)
        for name in compiled.plans:
            fleet.run(name, ["nft", "-f", "-"], input=render_plan(compiled.plans[name])[0])
        got = received(fleet, "ctl2", ["ctl1", "other"])
        assert got == {"ctl1"}
        expected = {src for src in ("ctl1", fleet.addr("other"))
                    if all(t.allowed for t in trace(compiled, src, "ctl2", "vrrp"))}
        expected = {"other" if src == fleet.addr("other") else src for src in expected}
        assert expected == got
        counters = fleet.run("ctl2", ["nft", "list", "counter", "inet", "mseg", "sys_controller_vrrp_in"]).stdout
        assert "packets 1 " in counters


def test_without_the_system_rule_enforce_drops_the_replicas_vrrp_too():
    """What the controllers had before: the policy's deny took their VRRP, and each replica became master."""
    with Fleet(["ctl1", "ctl2", "other"], ipv6=False) as fleet:
        compiled = compile_for(fleet, system=False)
        for name in compiled.plans:
            fleet.run(name, ["nft", "-f", "-"], input=render_plan(compiled.plans[name])[0])
        assert received(fleet, "ctl2", ["ctl1", "other"]) == set()
