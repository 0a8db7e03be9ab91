"""Compile + render benchmark: the engine against what a user would otherwise write.

    python benchmarks/compile.py [--sizes 500,1000,2000,5000,10000] [--rules 500] [--baseline-sample 100]

It generates a fleet of N hosts with realistic labels (role, env, zone, app) and a policy of about 500 rules, then
times ``compile_fleet`` + ``render_plan`` for every host on one core. At the baseline sizes (500 and 1,000) it
also runs, on the same inventory and policy, the usual hand-written approach: one Jinja template per host that
loops over every rule and, for each rule that selects the host, over every host of the inventory to collect the
peers. That baseline is timed on a fixed sample of hosts and scaled to N (it grows with N x N, so a full run takes
minutes); the ratio printed is baseline / engine. Absolute times are for information only: this is a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

import jinja2  # noqa: E402

from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402

ROLES = ["web", "app", "db", "cache", "queue", "search", "auth", "api", "batch", "mon", "log", "proxy",
         "mail", "dns", "ntp", "vpn", "ci", "git", "ldap", "historian"]
ENVS = ["prod", "stage", "dev"]
ZONES = ["zone%02d" % i for i in range(10)]
PORTS = ["tcp/22", "tcp/80", "tcp/443", "tcp/5432", "tcp/6379", "tcp/8080", "tcp/8000-8099", "udp/53", "icmp",
         "tcp/9100", "udp/123", "tcp/389"]

# The baseline: one template per host, as an Ansible user would write it with hostvars and groups.
BASELINE = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string("""\
{% macro matches(sel, tags) -%}
{%- set ns = namespace(ok=true) -%}
{%- for key, want in sel.get('tags', {}).items() -%}
{%- if tags.get(key) not in (want if want is not string else [want]) %}{% set ns.ok = false %}{% endif -%}
{%- endfor -%}
{{ 'yes' if ns.ok else 'no' }}
{%- endmacro %}
table inet mseg {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
{% for rule in policy.rules %}
{% if 'tags' in rule.to and matches(rule.to, hostvars[inventory_hostname].mseg_tags) == 'yes' %}
{% for peer in groups['all'] %}
{% if 'tags' in rule['from'] and matches(rule['from'], hostvars[peer].mseg_tags) == 'yes' %}
{% for port in rule.get('ports', ['all']) %}
    ip saddr {{ hostvars[peer].ansible_host }} {{ port }} {{ 'drop' if rule.get('action') == 'deny' else 'accept' }} comment "ID={{ rule.id }}"
{% endfor %}
{% endif %}
{% endfor %}
{% endif %}
{% endfor %}
  }
}
""")


def make_fleet(size, seed=1):
    rng = random.Random(seed)
    hosts = {}
    for index in range(size):
        role = ROLES[index % len(ROLES)]
        name = "%s-%05d" % (role, index)
        hosts[name] = {
            "tags": {"role": role, "env": ENVS[rng.randrange(3)], "zone": ZONES[rng.randrange(10)],
                     "app": "app%03d" % rng.randrange(max(1, size // 20))},
            "groups": [role],
            "addresses": ["10.%d.%d.%d" % (index // 65536 + 1, index // 256 % 256, index % 256),
                          "fd00:%x::%x" % (index // 65536 + 1, index % 65536 + 1)],
            "ansible_host": "10.%d.%d.%d" % (index // 65536 + 1, index // 256 % 256, index % 256),
            "mode": rng.choice(["enforce", "enforce", "observe"]),
            "management": [{"cidr": "10.250.0.0/24", "ports": ["tcp/22"]}],
        }
    return hosts


def make_policy(rules, seed=2):
    rng = random.Random(seed)
    items = []
    for rule_id in range(1, rules + 1):
        src = {"tags": {"role": rng.choice(ROLES), "env": rng.choice(ENVS)}}
        dst = {"tags": {"role": rng.choice(ROLES), "env": src["tags"]["env"]}}
        if rule_id % 25 == 0:
            src = {"cidr": ["192.0.2.0/24", "198.51.100.0/24"]}
        if rule_id % 7 == 0:
            dst["tags"]["zone"] = rng.sample(ZONES, 3)
        item = {"id": rule_id, "from": src, "to": dst, "ports": rng.sample(PORTS, rng.randrange(1, 4))}
        if rule_id % 20 == 0:
            item["action"] = "deny"
        elif rule_id % 31 == 0:
            item["action"] = "log"
        items.append(item)
    return {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": items}


def time_engine(hosts, policy, repeats):
    times = []
    size = 0
    for _repeat in range(repeats):
        start = time.perf_counter()
        fleet = compile_fleet(policy, hosts)
        size = 0
        for name in fleet.plans:
            size += len(render_plan(fleet.plans[name])[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times), size


def time_baseline(hosts, policy, sample):
    """Seconds the Jinja baseline takes for every host: rendered for every host (sample 0), or for ``sample`` of
    them and scaled (each host's template loops over all of them, so every host costs about the same)."""
    hostvars = {name: {"mseg_tags": h["tags"], "ansible_host": h["ansible_host"]} for name, h in hosts.items()}
    groups = {"all": sorted(hosts)}
    names = sorted(hosts)
    if 0 < sample < len(names):
        names = names[:: max(1, len(hosts) // sample)][:sample]
    start = time.perf_counter()
    for name in names:
        BASELINE.render(policy=policy, hostvars=hostvars, groups=groups, inventory_hostname=name)
    per_host = (time.perf_counter() - start) / len(names)
    return per_host * len(hosts), len(names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000,5000,10000")
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--baseline-sizes", default="500,1000")
    parser.add_argument("--baseline-sample", type=int, default=0,
                        help="render the baseline for this many hosts and scale to N (default 0: every host)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    baseline_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    policy = make_policy(args.rules)
    print("compile + render, %d rules, median of %d runs, one core (%s)"
          % (args.rules, args.repeats, os.uname().release))
    print("%8s %10s %10s %12s %14s %8s" % ("hosts", "engine s", "ms/host", "MB rendered", "baseline s", "ratio"))
    for size in sizes:
        hosts = make_fleet(size)
        seconds, rendered = time_engine(hosts, policy, args.repeats if size <= 2000 else 1)
        baseline = ratio = "-"
        if size in baseline_sizes:
            estimate, sampled = time_baseline(hosts, policy, args.baseline_sample)
            baseline = "%.2f" % estimate if sampled == size else "%.2f (%d)" % (estimate, sampled)
            ratio = "%.1fx" % (estimate / seconds)
        print("%8d %10.2f %10.3f %12.1f %14s %8s"
              % (size, seconds, 1000 * seconds / size, rendered / 1e6, baseline, ratio), flush=True)
    print("baseline s: one Jinja template per host over groups/hostvars, rendered for every host (with "
          "--baseline-sample K: for K hosts, shown as (K), and scaled); ratio = baseline / engine")


if __name__ == "__main__":
    main()
