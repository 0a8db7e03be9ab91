"""Discovery benchmark: flow records -> a proposed policy, on the control node (issue 20).

    python benchmarks/discover.py [--records 1000000] [--hosts 10000] [--repeats 3] [--baseline-sample 50000]

It generates a fleet of N hosts (20 roles, each role a server of one or two ports, clients in the roles that use
it, a monitoring role that scrapes every host, some outside clients and noise) and R flow records as the CSV the
collector writes, one record per connection, so the same flow recurs as it does in a real window. It then times,
on one core, the target of the issue (R = 1,000,000 over N = 10,000 in under 10 s), as CPU time of this process
(the machine is shared; wall time is printed beside it):

- read: parse the CSV and sum identical records (``records.read_csv``);
- propose: endpoint pairs, label pairs, rules and the YAML (``propose.propose``, on a compiled fleet);

and, for information, the check that follows (``check.discover`` minus the above: compiling the current and the
proposed policy and tracing every distinct observed address pair against both).

The baseline is what a script would do without summing first: resolve every record's two addresses with netaddr
and look up their hosts and labels, record by record. It is timed on a sample of records and scaled to R; the ratio
printed is baseline / (read + propose). Absolute times are for information only: this is a noisy machine.
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

import netaddr  # noqa: E402

from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.check import discover  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.propose import propose  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import (  # noqa: E402
    parse_settings, read_csv,
)
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402

ROLES = ["web", "app", "db", "cache", "queue", "search", "auth", "api", "batch", "mon", "log", "proxy",
         "mail", "dns", "ntp", "vpn", "ci", "git", "ldap", "historian"]
SERVES = {"web": [443, 80], "app": [8080], "db": [5432], "cache": [6379], "queue": [5672], "search": [9200, 9300],
          "auth": [8443], "api": [8000, 8001], "batch": [7000], "log": [514], "proxy": [3128], "mail": [25],
          "dns": [53], "ntp": [123], "vpn": [1194], "ci": [8081], "git": [22], "ldap": [389], "historian": [5450]}
CLIENTS = {"web": ["proxy"], "app": ["web", "api"], "db": ["app", "batch", "historian"], "cache": ["app", "api"],
           "queue": ["app", "batch"], "search": ["app", "api"], "auth": ["web", "app", "api"], "api": ["web", "proxy"],
           "batch": ["ci"], "log": ROLES, "proxy": ["web"], "mail": ["app"], "dns": ROLES, "ntp": ROLES,
           "vpn": ["auth"], "ci": ["git"], "git": ["ci"], "ldap": ["auth", "vpn"], "historian": ["batch"]}
UDP = {53, 123, 514, 1194}


def address(index):
    return "10.%d.%d.%d" % (index // 65536 + 1, index // 256 % 256, index % 256)


def make_fleet(size):
    hosts = {}
    by_role = {role: [] for role in ROLES}
    for index in range(size):
        role = ROLES[index % len(ROLES)]
        name = "%s-%05d" % (role, index)
        hosts[name] = {"tags": {"role": role, "env": "prod"}, "groups": [role], "addresses": [address(index)]}
        by_role[role].append(address(index))
    return hosts, by_role


def make_records(count, by_role, seed=1):
    """CSV lines: 90% role-to-role service traffic, 5% monitoring, 3% outside clients of web, 2% noise."""
    rng = random.Random(seed)
    services = [(role, port, client) for role, ports in SERVES.items() for port in ports for client in CLIENTS[role]]
    lines = ["src,dst,proto,dport,count,listening"]
    for _record in range(count):
        draw = rng.random()
        if draw < 0.90:
            role, port, client = services[rng.randrange(len(services))]
            src = by_role[client][rng.randrange(min(50, len(by_role[client])))]
            dst = by_role[role][rng.randrange(len(by_role[role]))]
            lines.append("%s,%s,%s,%d,1,true" % (src, dst, "udp" if port in UDP else "tcp", port))
        elif draw < 0.95:
            src = by_role["mon"][rng.randrange(3)]
            role = ROLES[rng.randrange(len(ROLES))]
            lines.append("%s,%s,tcp,9100,1,true" % (src, by_role[role][rng.randrange(len(by_role[role]))]))
        elif draw < 0.98:
            src = "198.51.%d.%d" % (rng.randrange(100, 102), rng.randrange(1, 255))
            lines.append("%s,%s,tcp,443,1,true" % (src, by_role["web"][rng.randrange(len(by_role["web"]))]))
        else:
            dst = by_role["db"][rng.randrange(len(by_role["db"]))]
            lines.append("203.0.113.%d,%s,tcp,%d,1," % (rng.randrange(1, 255), dst, rng.randrange(1, 65536)))
    return lines


def timer():
    """Start a clock; calling what it returns gives (CPU seconds, wall seconds) since."""
    cpu, wall = time.process_time(), time.perf_counter()
    return lambda: (time.process_time() - cpu, time.perf_counter() - wall)


def baseline(lines, hosts):
    """Record by record: parse both addresses with netaddr, find the hosts and their role, count the label pair."""
    by_address = {}
    for name, raw in hosts.items():
        for text in raw["addresses"]:
            by_address[netaddr.IPAddress(text)] = name
    pairs = {}
    for line in lines[1:]:
        src, dst, proto, port, _count, _listening = line.split(",")
        shost = by_address.get(netaddr.IPAddress(src))
        dhost = by_address.get(netaddr.IPAddress(dst))
        key = (hosts[shost]["tags"]["role"] if shost else src, hosts[dhost]["tags"]["role"] if dhost else dst,
               proto, int(port))
        pairs[key] = pairs.get(key, 0) + 1
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000000)
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-sample", type=int, default=50000)
    args = parser.parse_args()
    hosts, by_role = make_fleet(args.hosts)
    lines = make_records(args.records, by_role)
    settings = parse_settings({"min_count": 3})
    load = " ".join("%.1f" % v for v in os.getloadavg())
    clock = timer()
    fleet = compile_fleet({"rules": []}, hosts)
    compile_s = clock()
    reads, proposes = [], []
    flows = result = None
    for _round in range(args.repeats):
        clock = timer()
        flows = read_csv(lines)
        reads.append(clock())
        clock = timer()
        result = propose(flows, fleet, settings)
        proposes.append(clock())
    read_s, propose_s = (statistics.median(t[0] for t in reads), statistics.median(t[1] for t in reads)), \
        (statistics.median(t[0] for t in proposes), statistics.median(t[1] for t in proposes))
    clock = timer()
    report = discover(flows, hosts, None, settings)
    check_s = clock()
    sample = lines[:args.baseline_sample + 1]
    clock = timer()
    baseline(sample, hosts)
    scale = (len(lines) - 1) / max(1, len(sample) - 1)
    baseline_s = tuple(t * scale for t in clock())
    engine_s = (read_s[0] + propose_s[0], read_s[1] + propose_s[1])
    left = {reason: len(items) for reason, items in result.left_out.items() if items}
    print("records %d, hosts %d, distinct flows %d, endpoint pairs kept %d, rules %d, left out %s"
          % (args.records, args.hosts, len(flows.counts), len(result.kept), len(result.rules), left))
    print("load average before: %s; times are CPU s / wall s of this process (medians of %d)"
          % (load, args.repeats))
    print("compile of the fleet (not counted):  %6.2f / %6.2f" % compile_s)
    print("read (CSV, summed):                  %6.2f / %6.2f" % read_s)
    print("propose:                             %6.2f / %6.2f" % propose_s)
    print("read + propose:                      %6.2f / %6.2f   target < 10 s CPU: %s"
          % (engine_s + ("met" if engine_s[0] < 10 else "NOT met",)))
    print("check (2 compiles, every distinct record traced; once): %6.2f / %6.2f; uncovered %d"
          % (check_s + (len(report.uncovered),)))
    print("baseline (netaddr per record, scaled from %d records): %6.2f / %6.2f"
          % ((len(sample) - 1,) + baseline_s))
    print("baseline / (read + propose), CPU: %.1fx" % (baseline_s[0] / engine_s[0]))
    if report.uncovered:
        print("FAILED: the proposal does not allow %d observed flows" % len(report.uncovered))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
