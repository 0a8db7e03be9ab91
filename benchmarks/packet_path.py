"""Packet-path benchmark: the rendered policy against iptables and against no firewall, as ratios.

    sudo .venv/bin/python benchmarks/packet_path.py [--quick] [--sizes 10x10,10000x1000] [--rounds 5] [--seconds 0.8]

Everything runs in network namespaces made here (two per variant, joined by one veth pair; no packet leaves them).
For every size P x R (P allowed peers across R policy rules, P/R addresses per rule, every rule allowing tcp/5001 to
the server) the server namespace of each variant holds:

* none               no firewall at all (not even conntrack);
* conntrack          only ``ct state established,related accept``: the floor every stateful firewall pays (the
                     connection-tracking entry per connection, a lookup per packet); not a policy;
* ours               the policy compiled and rendered by the engine (``compile_fleet`` + ``render_plan``), mode
                     enforce, ingress default deny, loaded with ``nft -f``;
* iptables-nft       the same policy as linear iptables rules, loaded with ``iptables-nft-restore``: an
  iptables-legacy    ESTABLISHED,RELATED accept first, then one rule per peer and port in policy order, then DROP;
                     ``iptables-legacy-restore`` too when the kernel has the legacy tables;
* ipset              one ``hash:net`` ipset per policy rule and one iptables(-legacy) rule per set.

The client is the last peer of the last rule, so in a linear ruleset a new connection walks the whole policy
before it is accepted. Rounds alternate the variants (in a rotated order) and each measures, with ``tcpbench``
(benchmarks/tcpbench.c, built here with cc): ``crr`` fresh TCP connections (connect, 1-byte request and response,
close) for --seconds, ``stream`` TCP throughput as long, and ``rr`` 1-byte request/response on one established
connection a third as long. Client and server are pinned to one core (--cpu): on a shared 2-core VM a cross-core wake-up
costs more than the whole firewall.
The figure per variant is the median over rounds of each run's median; the connection rate is 1 / (median
connection time), which preemption by other work on the machine does not move the way it moves the mean.

Ratios: ours / none (target >= 0.95 for the connection rate and throughput, <= 1.05 for the latency) and
ours / iptables-linear for the connection rate (target >= 5 at 10,000 peers). After each variant's runs the
counter of the rule that should have matched is read back: a variant whose client was accepted elsewhere (or not
at all) fails the benchmark.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402

PORT = 5001
SERVER = "192.168.77.1"
FULL_SIZES = "10x10,1000x10,1000x1000,10000x10,10000x1000,100000x10,100000x1000"
QUICK_SIZES = "10x10,1000x10,10000x10,10000x1000"
PREFIX = "mspp"
STALE_RE = re.compile(r"^" + PREFIX + r"(\d+)-")
VARIANTS = ("none", "conntrack", "ours", "iptables-nft", "iptables-legacy", "ipset")
COMPARED = ("conntrack", "iptables-nft", "iptables-legacy", "ipset")
CONNTRACK_ONLY = """table inet bench_conntrack {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
    }
}
"""


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


def run(argv, stdin=None, timeout=None):
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError("%s: %s" % (" ".join(argv[:6]), (proc.stderr or proc.stdout).strip()[:500]))
    return proc.stdout


def tool(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


# ----------------------------------------------------------------------------- the policy and its equivalents


def peer_address(index):
    """Distinct, non-adjacent IPv4 host addresses, so that no interval set or prefix merge can fold them."""
    value = index * 2
    return "10.%d.%d.%d" % (value >> 16 & 255, value >> 8 & 255, value & 255)


def slices(peers, rules):
    """P peers across R rules: rule r (1-based) allows the r-th contiguous slice; the last peer is in rule R."""
    return [[peer_address(i) for i in range(r * peers // rules, (r + 1) * peers // rules)] for r in range(rules)]


def policy_and_fleet(peers, rules):
    policy = {
        "defaults": {"ingress": "deny", "egress": "allow"},
        "rules": [{"id": r + 1, "name": "peers-%d" % (r + 1), "from": {"cidr": part}, "to": {"hosts": ["server"]},
                   "ports": ["tcp/%d" % PORT]} for r, part in enumerate(slices(peers, rules))],
    }
    hosts = {"server": {"tags": {"role": "server"}, "addresses": [SERVER], "mode": "enforce"}}
    return policy, hosts


def render_ours(peers, rules):
    policy, hosts = policy_and_fleet(peers, rules)
    start = time.perf_counter()
    text, _stats = render_plan(compile_fleet(policy, hosts).plans["server"])
    return text, time.perf_counter() - start


def iptables_linear(peers, rules):
    lines = ["*filter", ":INPUT DROP [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-A INPUT -i lo -j ACCEPT"]
    for part in slices(peers, rules):
        lines += ["-A INPUT -s %s/32 -p tcp -m tcp --dport %d -j ACCEPT" % (addr, PORT) for addr in part]
    return "\n".join(lines + ["COMMIT", ""])


def ipset_sets(peers, rules):
    lines = []
    for r, part in enumerate(slices(peers, rules)):
        lines.append("create r%d hash:net family inet hashsize %d maxelem %d" % (
            r + 1, max(64, 1 << (len(part) - 1).bit_length()), max(65536, len(part))))
        lines += ["add r%d %s" % (r + 1, addr) for addr in part]
    return "\n".join(lines + [""])


def ipset_rules(rules):
    lines = ["*filter", ":INPUT DROP [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-A INPUT -i lo -j ACCEPT"]
    lines += ["-A INPUT -p tcp -m tcp --dport %d -m set --match-set r%d src -j ACCEPT" % (PORT, r + 1)
              for r in range(rules)]
    return "\n".join(lines + ["COMMIT", ""])


# ----------------------------------------------------------------------------- namespaces


def cleanup_stale():
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        name = line.split(" ")[0]
        match = STALE_RE.match(name)
        if match and not os.path.exists("/proc/%s" % match.group(1)):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


class Pair(object):
    """A server and a client namespace on a veth pair; the client has the last peer's address."""

    def __init__(self, tag, client, cpu, binary):
        self.tag = tag
        self.server_ns = "%s%d-%s-s" % (PREFIX, os.getpid(), tag)
        self.client_ns = "%s%d-%s-c" % (PREFIX, os.getpid(), tag)
        self.cpu = str(cpu)
        self.binary = binary
        self.server = None
        self.compile_seconds = None
        self.check = None
        run(["ip", "netns", "add", self.server_ns])
        run(["ip", "netns", "add", self.client_ns])
        run(["ip", "link", "add", "srv0", "netns", self.server_ns, "type", "veth", "peer", "name", "cli0",
             "netns", self.client_ns])
        for ns, dev, mine, other in ((self.server_ns, "srv0", SERVER, client),
                                     (self.client_ns, "cli0", client, SERVER)):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "addr", "add", mine, "peer", other, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])

    def start_server(self):
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, "taskset", "-c", self.cpu, self.binary, "server", str(PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.server.stdout.readline().strip()
        if line != "ready":
            raise BenchError("tcpbench server in %s did not start: %s %s"
                             % (self.server_ns, line, self.server.stderr.read().strip()))

    def in_server(self, argv, stdin=None, timeout=None):
        return run(["ip", "netns", "exec", self.server_ns] + argv, stdin=stdin, timeout=timeout)

    def client(self, mode, seconds):
        out = run(["ip", "netns", "exec", self.client_ns, "taskset", "-c", self.cpu, self.binary, mode, SERVER,
                   str(PORT), "%.3f" % seconds], timeout=seconds + 30)
        fields = out.split()
        if not fields or fields[0] != "ok":
            raise BenchError("%s %s: %s" % (self.tag, mode, out.strip()))
        count, elapsed, median, p99 = (float(f) for f in fields[1:5])
        return {"count": count, "elapsed": elapsed, "median": median, "p99": p99}

    def close(self):
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        for ns in (self.client_ns, self.server_ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


# ----------------------------------------------------------------------------- variants


def load_variant(pair, variant, peers, rules, max_load, ipset_backend):
    """Load the variant's ruleset into the pair's server namespace; returns seconds; sets the pair's match check.

    ``ipset_backend`` is the iptables of the ipset variant: ``legacy`` where the kernel has it, else ``nft``.
    """
    start = time.perf_counter()
    if variant == "ours":
        text, pair.compile_seconds = render_ours(peers, rules)
        start = time.perf_counter()
        pair.in_server(["nft", "-f", "-"], stdin=text, timeout=max_load)
        pair.check = lambda: _nft_counter(pair, "rule_%d_in" % rules)
    elif variant in ("iptables-nft", "iptables-legacy"):
        backend = variant.split("-")[1]
        pair.in_server([tool("iptables-%s-restore" % backend)], stdin=iptables_linear(peers, rules), timeout=max_load)
        pair.check = lambda: _iptables_last(pair, backend)
    elif variant == "conntrack":
        pair.in_server(["nft", "-f", "-"], stdin=CONNTRACK_ONLY, timeout=max_load)
        pair.check = None
    elif variant == "ipset":
        pair.in_server([tool("ipset"), "restore"], stdin=ipset_sets(peers, rules), timeout=max_load)
        pair.in_server([tool("iptables-%s-restore" % ipset_backend)], stdin=ipset_rules(rules), timeout=max_load)
        pair.check = lambda: _iptables_last(pair, ipset_backend)
    else:  # none: no firewall, nothing to check
        pair.check = None
    return time.perf_counter() - start


def _nft_counter(pair, name):
    out = pair.in_server(["nft", "list", "counter", "inet", "mseg", name])
    match = re.search(r"packets (\d+)", out)
    return int(match.group(1)) if match else 0


def _iptables_last(pair, backend):
    out = pair.in_server([tool("iptables-%s" % backend), "-L", "INPUT", "-n", "-v", "-x"])
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    return int(rows[-1][0]) if rows else 0


def legacy_available():
    binary = tool("iptables-legacy")
    if not binary:
        return False
    probe = "%s%d-probe" % (PREFIX, os.getpid())
    run(["ip", "netns", "add", probe])
    try:
        probed = subprocess.run(["ip", "netns", "exec", probe, binary, "-L", "-n"], capture_output=True, check=False)
        return probed.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)


# ----------------------------------------------------------------------------- measuring


def measure(pairs, order, rounds, seconds):
    """Alternate the variants ``rounds`` times (rotating the order); returns {variant: {metric: median}}."""
    runs = {v: {"crr": [], "crr_rate": [], "rr": [], "stream": []} for v in order}
    for index in range(rounds):
        shift = index % len(order)
        for variant in order[shift:] + order[:shift]:
            pair = pairs[variant]
            crr = pair.client("crr", seconds)
            rr = pair.client("rr", max(0.2, seconds / 3))
            stream = pair.client("stream", seconds)
            runs[variant]["crr"].append(crr["median"])
            runs[variant]["crr_rate"].append(crr["count"] / crr["elapsed"])
            runs[variant]["rr"].append(rr["median"])
            runs[variant]["stream"].append(stream["count"] * 8 / stream["elapsed"] / 1e9)
    result = {}
    for variant in order:
        figures = {metric: statistics.median(values) for metric, values in runs[variant].items()}
        check = pairs[variant].check
        if check is not None and check() == 0:
            raise BenchError("%s: the client's connections never reached the rule meant to accept them" % variant)
        result[variant] = figures
    return result


def build_tcpbench(workdir):
    compiler = tool("cc") or tool("gcc")
    if not compiler:
        raise BenchError("no C compiler (cc): install gcc (make bench does)")
    binary = os.path.join(workdir, "tcpbench")
    run([compiler, "-O2", "-Wall", "-o", binary, os.path.join(ROOT, "benchmarks", "tcpbench.c")])
    return binary


def parse_sizes(text):
    sizes = []
    for item in text.split(","):
        match = re.match(r"^\s*(\d+)x(\d+)\s*$", item)
        if not match:
            raise BenchError("--sizes: %r is not PEERSxRULES, e.g. 10000x1000" % item)
        peers, rules = int(match.group(1)), int(match.group(2))
        if not 1 <= rules <= peers <= 1000000:
            raise BenchError("--sizes: %s: need 1 <= rules <= peers <= 1,000,000 (every rule allows at least one "
                             "peer)" % item.strip())
        sizes.append((peers, rules))
    return sizes


def ratio(value):
    return "%.2f" % value if value is not None else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--sizes", help="PEERSxRULES,... (default %s; --quick %s)" % (FULL_SIZES, QUICK_SIZES))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5; --quick 3)")
    parser.add_argument("--seconds", type=float, help="seconds of crr and of stream per run, rr gets a third "
                        "(default 0.8; --quick 0.5)")
    parser.add_argument("--cpu", type=int, default=0, help="the core client and server are pinned to")
    parser.add_argument("--max-load", type=float, default=120.0,
                        help="a variant whose ruleset takes longer to load is skipped at this size and above")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a subset of %s" % ",".join(VARIANTS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/packet_path.py needs root (it creates network namespaces)")
    try:
        sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES))
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(VARIANTS))
        if unknown or "ours" not in wanted or "none" not in wanted:
            raise BenchError("--variants: %s; give a subset of %s that includes none and ours"
                             % ("unknown " + ", ".join(unknown) if unknown else "none and ours are required",
                                ", ".join(VARIANTS)))
        return bench(args, sizes, wanted)
    except BenchError as exc:
        print("packet_path: %s" % exc, file=sys.stderr)
        return 1


def bench(args, sizes, wanted):
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = args.seconds or (0.5 if args.quick else 0.8)
    cleanup_stale()
    workdir = tempfile.mkdtemp(prefix="mseg-packet-path-")
    pairs = {}

    def teardown(*_ignored):
        for pair in list(pairs.values()):
            pair.close()
        pairs.clear()
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(teardown)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = build_tcpbench(workdir)
    notes = []
    if "iptables-legacy" in wanted and not legacy_available():
        wanted.remove("iptables-legacy")
        notes.append("iptables-legacy: not available here (no legacy tables in this kernel or no binary); skipped")
    ipset_backend = "legacy" if "iptables-legacy" in wanted else "nft"
    if "ipset" in wanted and not tool("ipset"):
        wanted.remove("ipset")
        notes.append("ipset: not installed; skipped")
    labels = {v: v for v in wanted}
    if "ipset" in labels:
        labels["ipset"] = "ipset+iptables-%s" % ipset_backend
    capped = {}

    print("packet path: %d round(s) alternating, crr %.1f s / rr %.1f s / stream %.1f s per run, client and server "
          "on cpu %d, kernel %s" % (rounds, seconds, max(0.2, seconds / 3), seconds, args.cpu, os.uname().release))
    summary = []
    for peers, rules in sizes:
        client = peer_address(peers - 1)
        present = {}
        loads = {}
        for variant in wanted:
            if variant in capped and peers >= capped[variant]:
                continue
            pair = Pair("%s-%d-%d" % (variant.split("-")[-1], peers, rules), client, args.cpu, binary)
            pairs[variant] = pair
            try:
                loads[variant] = load_variant(pair, variant, peers, rules, args.max_load, ipset_backend)
            except subprocess.TimeoutExpired:
                if variant == "ours":
                    raise BenchError("ours: loading the ruleset of %d peers took over --max-load %.0f s"
                                     % (peers, args.max_load))
                capped[variant] = peers
                notes.append("%s: loading at %d peers took over %.0f s (--max-load); not measured at %d peers or more"
                             % (labels[variant], peers, args.max_load, peers))
                pair.close()
                del pairs[variant]
                continue
            pair.start_server()
            present[variant] = pair
        order = [v for v in wanted if v in present]
        figures = measure(present, order, rounds, seconds)
        for variant in order:
            present[variant].close()
            del pairs[variant]
        print()
        print("P=%d peers, R=%d rules (client = %s, matched by the last rule)" % (peers, rules, client))
        print("  %-24s %8s %10s %10s %10s %9s %9s"
              % ("variant", "load s", "conn/s", "conn us", "(measured)", "rr us", "Gbit/s"))
        for variant in order:
            f = figures[variant]
            print("  %-24s %8s %10.0f %10.1f %10.0f %9.1f %9.2f" % (
                labels[variant], "%.2f" % loads[variant] if variant != "none" else "-", 1e6 / f["crr"], f["crr"],
                f["crr_rate"], f["rr"], f["stream"]))
        ours, none = figures["ours"], figures["none"]
        row = {"size": (peers, rules), "conn": none["crr"] / ours["crr"], "rr": ours["rr"] / none["rr"],
               "stream": ours["stream"] / none["stream"]}
        for variant in COMPARED:
            row[variant] = figures[variant]["crr"] / ours["crr"] if variant in figures else None
        added = max(ours["crr"] - none["crr"], 0.1)
        row["added"] = {v: (figures[v]["crr"] - none["crr"]) / added for v in COMPARED if v in figures}
        row["added_us"] = ours["crr"] - none["crr"]
        summary.append(row)
        print("  compile + render of ours: %.2f s" % present["ours"].compile_seconds)
        print("  ours / no-firewall: conn rate %.2f, rr latency %.2f, throughput %.2f; conn rate ours / conntrack "
              "only %s, / iptables-nft %s, / iptables-legacy %s, / ipset %s" % (
                  row["conn"], row["rr"], row["stream"], *(ratio(row[v]) for v in COMPARED)), flush=True)

    print()
    print("Summary: ours / baseline (conn = new-connection rate, higher is better; rr = latency on an established "
          "connection and Gbit = throughput, both against no firewall)")
    print("  %-12s %9s %8s %9s %10s %10s %10s %10s" % ("P x R", "conn/none", "rr/none", "Gbit/none", "conn/ct",
                                                       "conn/ipt-nft", "conn/ipt-leg", "conn/ipset"))
    for row in summary:
        print("  %-12s %9.2f %8.2f %9.2f %10s %10s %10s %10s" % (
            "%dx%d" % row["size"], row["conn"], row["rr"], row["stream"], *(ratio(row[v]) for v in COMPARED)))
    missed = []
    for row in summary:
        size = "%dx%d" % row["size"]
        for metric, bad in (("conn rate", row["conn"] < 0.95), ("rr latency", row["rr"] > 1.05),
                            ("throughput", row["stream"] < 0.95)):
            if bad:
                missed.append("%s %s" % (size, metric))
        if row["size"][0] == 10000:
            for variant in ("iptables-nft", "iptables-legacy"):
                if row[variant] is not None and row[variant] < 5:
                    missed.append("%s only %.1fx %s" % (size, row[variant], variant))
    print("targets (within 5%% of no firewall everywhere; conn rate >= 5x iptables-linear at 10,000 peers): %s"
          % ("met" if not missed else "MISSED: " + ", ".join(missed)))
    print()
    print("Cost per new connection over no firewall (us), and each baseline's cost / ours (the firewall's own work, "
          "without the kernel's fixed TCP cost)")
    print("  %-12s %8s %10s %10s %10s %10s" % ("P x R", "ours us", "conntrack", "ipt-nft", "ipt-legacy", "ipset"))
    for row in summary:
        print("  %-12s %8.1f %10s %10s %10s %10s" % ("%dx%d" % row["size"], row["added_us"],
                                                     *(ratio(row["added"].get(v)) for v in COMPARED)))
    for note in notes:
        print("note: " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
