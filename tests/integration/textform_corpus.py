"""Real rendered rulesets covering every construct the nftables renderer writes (the text translator's corpus).

``corpus()`` compiles small policies and renders them as ``render_plan`` does for the product, then wraps each as
the apply engine does (``build_transaction``: preamble, content, this run's management elements): allow, deny and
log rules, allow runs merged into verdict maps, v4 and v6 address sets with prefixes, tcp and udp ports and port
ranges, ICMP in both families, IP protocols (vrrp, gre), any-port and any-address rules, a local match, management
entries, the controllers' system rules and connection limit, observe, enforce, bypass and the emergency bypass.
"""

import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils.apply.peers import build_transaction  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft.bypass import bypass_ruleset  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402

PEERS = [("10.255.0.7", 22), ("fd00:ff::7", 2222)]
ALLOW_MAP = {"defaults": {"ingress": "deny", "egress": "deny"}, "rules": [
    {"id": 1, "from": {"cidr": ["10.77.0.1", "fd00:77::1"]}, "to": {"hosts": ["db"]}, "ports": ["tcp/8080"]},
    {"id": 2, "from": {"cidr": ["10.77.0.2", "10.77.0.1", "fd00:77::2"]}, "to": {"hosts": ["db"]},
     "ports": ["tcp/8080"]},
    {"id": 3, "from": {"cidr": ["10.77.0.0/30", "fd00:77::/126", "172.16.0.0/12"]}, "to": {"hosts": ["db"]},
     "ports": ["tcp/8080"]},
    {"id": 4, "from": {"hosts": ["db"]}, "to": {"cidr": ["10.9.0.0/16", "2001:db8::/32"]},
     "ports": ["udp/53", "tcp/53"]},
    {"id": 5, "from": {"hosts": ["db"]}, "to": {"cidr": ["10.8.0.0/16"]}, "ports": ["udp/53", "tcp/53"]},
]}
SHAPES = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": [
    {"id": 7, "from": {"any": True}, "to": {"hosts": ["db"]}, "ports": ["icmp"]},
    {"id": 8, "from": {"cidr": ["192.0.2.0/24", "2001:db8:1::/48"]}, "to": {"hosts": ["db"]},
     "ports": ["vrrp", "gre", "proto/50-51"]},
    {"id": 9, "from": {"cidr": ["198.51.100.0/24"]}, "to": {"hosts": ["db"]}},
    {"id": 11, "from": {"any": True}, "to": {"cidr": ["10.77.0.5"]}, "ports": ["udp/5000-5010", "tcp/22"]},
    {"id": 12, "from": {"cidr": ["203.0.113.0/24"]}, "to": {"hosts": ["db"]}, "ports": ["udp"], "action": "log"},
    {"id": 13, "from": {"cidr": ["203.0.113.128/25"]}, "to": {"hosts": ["db"]}, "action": "deny"},
    {"id": 14, "from": {"hosts": ["db"]}, "to": {"any": True}, "ports": ["tcp/443"], "action": "deny"},
]}
CONTROLLER = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": [
    {"id": 10, "name": "nothing-to-controllers", "from": {"any": True}, "to": {"group": "controllers"},
     "action": "deny"},
]}
SETTINGS = {"agent_port": 8443, "operator_port": 443, "operators": ["192.0.2.0/24", "2001:db8:2::/48"],
            "vip": "10.77.0.100", "conn_limit": 5}


def _fleet_yml():
    with open(os.path.join(ROOT, "tests", "unit", "fixtures", "fleet.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _db(mode):
    return {"db": {"addresses": ["10.77.0.5", "fd00:77::5"], "mode": mode,
                   "management": [{"cidr": "10.255.0.0/24", "ports": ["tcp/22", "udp/161"]},
                                  {"cidr": "fd00:ff::/64", "ports": ["tcp/22"]}]}}


def rendered():
    """``{name: rendered text}`` for every ruleset of the corpus (the content the product passes to nft_apply)."""
    texts = {}
    data = _fleet_yml()
    compiled = compile_fleet(data["policy"], data["hosts"])
    for host in sorted(data["hosts"]):
        texts["fleet-%s" % host] = render_plan(compiled.plans[host])[0]
    for mode in ("enforce", "observe"):
        texts["allow-map-%s" % mode] = render_plan(compile_fleet(ALLOW_MAP, _db(mode)).plans["db"])[0]
        texts["shapes-%s" % mode] = render_plan(compile_fleet(SHAPES, _db(mode)).plans["db"])[0]
        hosts = {name: {"addresses": ["10.77.0.%d" % index, "fd00:77::%d" % index], "mode": mode,
                        "groups": ["controllers"]} for index, name in ((1, "ctl1"), (2, "ctl2"))}
        hosts.update({"agent": {"addresses": ["10.77.0.3"], "mode": "enforce"}})
        compiled = compile_fleet(CONTROLLER, hosts, {"controller": {"hosts": ["ctl1", "ctl2"],
                                                                    "settings": SETTINGS}})
        texts["controller-%s" % mode] = render_plan(compiled.plans["ctl1"])[0]
    texts["emergency-bypass"] = bypass_ruleset("web-01")
    return texts


def corpus():
    """``{name: transaction text}``: each rendered ruleset as the apply engine passes it to ``Nft.judge``."""
    return {name: build_transaction(text, PEERS) for name, text in rendered().items()}
