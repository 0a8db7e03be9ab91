"""Discovery collector benchmark: what the host-side collector costs a host under load, as ratios.

    sudo .venv/bin/python benchmarks/discover_collector.py [--quick] [--rounds 3] [--seconds 30] [--interval 5]

Two network namespaces on a veth pair (made here, as benchmarks/packet_path.py makes them; no packet leaves them).
The server namespace carries a minimal table (``ct state established,related accept``, policy accept), so that
its kernel tracks connections, as the mseg table does on a host in observe mode. The load is ``tcpbench crr``
(benchmarks/tcpbench.c): fresh TCP connections (connect, 1-byte request and response, reset), as fast as they go,
for --seconds. Rounds alternate the two variants:

* baseline   the traffic alone;
* collector  the same traffic while the real collector (``plugins/module_utils/host/discover.py``, the script the
             module writes to the host, run with the same interpreter and arguments as the transient unit, here
             without the unit's CPUQuota/MemoryMax so that its whole cost shows) samples the server namespace's
             conntrack table every --interval seconds.

Client, server and collector are pinned to one core (--cpu), so that whatever the collector takes is taken from the
traffic. Per variant, the median over rounds of: the connection rate, and the CPU seconds of the traffic (client and
server); for the collector its CPU seconds (user + system, from wait4), its share of one core over the round and its
peak resident memory (ru_maxrss). Ratios: the rate with the collector over the rate without (target >= 0.95), the
collector's CPU over the traffic's, and its peak memory over the traffic's. After each collector round its records
must hold connections made (a collector that saw nothing would cost nothing, so a round without any fails the
benchmark); the recorded / made ratio is printed: under a rate the sampling cannot follow it is below 1.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from packet_path import (  # noqa: E402  (the namespaces and traffic generator of the packet-path benchmark)
    CONNTRACK_ONLY, PORT, ROOT, SERVER, BenchError, Pair, build_tcpbench, cleanup_stale,
)

COLLECTOR = os.path.join(ROOT, "plugins", "module_utils", "host", "discover.py")
CLIENT = "192.168.77.2"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU seconds (user + system) of a running process and its waited-for children, from /proc."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def proc_rss_peak(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def waited(proc):
    """(exit status, CPU seconds, peak RSS bytes) of a child, from wait4."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def server_pid(pair):
    """The tcpbench server's own pid (ip netns exec and taskset exec it, so it is the Popen's pid)."""
    return pair.server.pid


def one_round(pair, variant, args, workdir):
    client_argv = ["ip", "netns", "exec", pair.client_ns, "taskset", "-c", pair.cpu, pair.binary, "crr", SERVER,
                   str(PORT), "%.3f" % args.seconds]
    out = os.path.join(workdir, "records.csv")
    collector = None
    if variant == "collector":
        for path in (out, out + ".json"):
            if os.path.exists(path):
                os.unlink(path)
        collector = subprocess.Popen(
            ["ip", "netns", "exec", pair.server_ns, "taskset", "-c", pair.cpu, "nice", "-n", "10", sys.executable,
             COLLECTOR, "--seconds", "%d" % (args.seconds + args.interval), "--interval", str(args.interval),
             "--max-flows", "100000", "--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)   # its first sample (and the interpreter's start) before the traffic
    server_before = proc_cpu(server_pid(pair))
    started = time.monotonic()
    client = subprocess.Popen(client_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, client_cpu, client_rss = waited(client)
    text = client.stdout.read()
    fields = text.split()
    if rc != 0 or not fields or fields[0] != "ok":
        raise BenchError("crr (%s): %s %s" % (variant, text.strip(), client.stderr.read().strip()))
    made = float(fields[1])
    row = {"rate": made / float(fields[2]), "made": made,
           "traffic_cpu": client_cpu + proc_cpu(server_pid(pair)) - server_before,
           "traffic_rss": client_rss + proc_rss_peak(server_pid(pair))}
    if collector is not None:
        rc, cpu, rss = waited(collector)
        wall = time.monotonic() - started + 0.5
        if rc != 0:
            raise BenchError("collector exited %d: %s" % (rc, collector.stderr.read().decode().strip()[:500]))
        with open(out, encoding="utf-8") as handle:
            recorded = sum(int(r["count"]) for r in csv.DictReader(handle)
                           if r["dst"] == SERVER and r["proto"] == "tcp" and r["dport"] == str(PORT))
        with open(out + ".json", encoding="utf-8") as handle:
            status = json.load(handle)
        row.update(collector_cpu=cpu, collector_wall=wall, collector_rss=rss, recorded=recorded,
                   samples=status["samples"], entries=status["conntrack_entries"])
        if not recorded:
            raise BenchError("the collector recorded none of %d connections: it did not see the traffic" % made)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 s")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--interval", type=float, default=5.0, help="the collector's sampling interval (the "
                        "playbook's default, mseg_discover_interval, is 5)")
    parser.add_argument("--cpu", type=int, default=min(1, os.cpu_count() - 1))
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.seconds = args.seconds or (10.0 if args.quick else 30.0)
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces): sudo %s %s" % (sys.executable, " ".join(sys.argv)))
    try:
        report(bench(args), args)
    except BenchError as exc:
        sys.exit("discover_collector benchmark: %s" % exc)


def bench(args):
    cleanup_stale()
    workdir = tempfile.mkdtemp(prefix="mseg-discover-collector-")
    pairs = []

    def teardown(*_ignored):
        for pair in pairs:
            pair.close()
        del pairs[:]
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(teardown)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = build_tcpbench(workdir)
    pair = Pair("dc", CLIENT, args.cpu, binary)
    pairs.append(pair)
    pair.in_server(["nft", "-f", "-"], stdin=CONNTRACK_ONLY)
    pair.start_server()
    rows = {"baseline": [], "collector": []}
    for number in range(args.rounds):
        order = ("baseline", "collector") if number % 2 == 0 else ("collector", "baseline")
        for variant in order:
            rows[variant].append(one_round(pair, variant, args, workdir))
            time.sleep(1)
    return rows


def report(rows, args):
    def median(variant, key):
        return statistics.median(row[key] for row in rows[variant])

    load = " ".join("%.1f" % x for x in os.getloadavg())
    print("discovery collector overhead: %d alternating rounds of %.0f s of tcpbench crr, collector interval %.1f s, "
          "all on cpu %d; load average after: %s" % (args.rounds, args.seconds, args.interval, args.cpu, load))
    print("maxrss of this process (not counted): %.1f MiB" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    for variant in ("baseline", "collector"):
        print("%-10s rate %8.0f conn/s (rounds: %s)   traffic CPU %6.2f s   traffic peak RSS %5.1f MiB" % (
            variant, median(variant, "rate"), ", ".join("%.0f" % r["rate"] for r in rows[variant]),
            median(variant, "traffic_cpu"), median(variant, "traffic_rss") / 2 ** 20))
    cpu, wall = median("collector", "collector_cpu"), median("collector", "collector_wall")
    print("collector  CPU %.2f s over %.1f s = %.1f%% of one core; peak RSS %.1f MiB; samples %d; conntrack entries "
          "at the last sample %d; recorded %d of %d connections (%.3f)" % (
              cpu, wall, 100 * cpu / wall, median("collector", "collector_rss") / 2 ** 20,
              median("collector", "samples"), median("collector", "entries"), median("collector", "recorded"),
              median("collector", "made"), median("collector", "recorded") / median("collector", "made")))
    rate = median("collector", "rate") / median("baseline", "rate")
    print("ratio: rate with / without the collector %.3f (target >= 0.95: %s)"
          % (rate, "met" if rate >= 0.95 else "NOT met"))
    print("ratio: collector CPU / traffic CPU (same round) %.3f" % (cpu / median("collector", "traffic_cpu")))
    print("ratio: collector peak RSS / traffic peak RSS %.2f" % (
        median("collector", "collector_rss") / median("collector", "traffic_rss")))


if __name__ == "__main__":
    main()
