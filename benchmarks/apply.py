"""Apply benchmark: nft_apply's engine against iptables-restore of the equivalent linear rules.

    sudo python benchmarks/apply.py [--elements 100000] [--repeat 5]

Runs as root in two throw-away network namespaces (nothing outside them is touched):

* nft_apply: the engine the module runs on the host (``plugins/module_utils/apply/``) applying a
  contract-shaped ruleset whose peer set holds N elements: the checked load (nft parses the text in a
  scratch namespace, its JSON form is judged, ``nft/jsonform.py``), the one ``nft -j -f`` transaction,
  recording, persisting. Then re-runs: unchanged (the usual case: the kernel's ruleset generation id is
  unchanged, so nothing is parsed or listed), unchanged after another table changed (the table is listed
  and compared), and a change of one element (a full replace).
* nft_apply with the same ruleset in the JSON form (``{"nftables": [...]}``, here made once from the text by nft
  itself, as a renderer writing the JSON form would hand it to the host): judged as it is (``jsonform``,
  ``contract.check_ruleset``), one ``nft -j -f``, no scratch parse; first apply (from no table) and unchanged re-run.
* bare nft: ``nft -f`` of the same transaction text into a namespace without the table (what a first
  apply with no checks at all would cost), and the engine's parts on their own: the scratch parse, ``nft
  -j -f`` of the judged document, ``nft -s list``.
* baseline: ``iptables-restore`` (and ``iptables-legacy-restore`` when installed) of the same policy
  as N linear rules, ``-A INPUT -s ADDR -p tcp --dport 8080 -j ACCEPT``, loaded fresh and re-loaded
  unchanged (iptables-restore has no notion of "unchanged": it always reloads).

Ratios are nft_apply / baseline (below 1 = faster). Absolute times are for information only: the
machines this runs on are noisy. Targets (issue 16): first apply of 100k elements under 1 s and
within 1.3x the bare ``nft -f`` of the same transaction, unchanged re-run under 0.2 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine, peers  # noqa: E402  (plain Python)
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform  # noqa: E402


def addresses(count):
    """``count`` distinct, non-adjacent IPv4 host addresses (so the interval set cannot merge them)."""
    return ["10.%d.%d.%d" % ((i * 2) >> 16 & 255, (i * 2) >> 8 & 255, (i * 2) & 255) for i in range(count)]


def ruleset(elements, port=8080):
    peers = ",\n            ".join(elements)
    return """#!/usr/sbin/nft -f
table inet mseg {}
delete table inet mseg
table inet mseg {
    set mgmt_auto_v4 {
        type ipv4_addr . inet_service
    }
    set mgmt_auto_v6 {
        type ipv6_addr . inet_service
    }
    set r1024_in_v4 {
        type ipv4_addr
        flags interval
        elements = { %s }
    }
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        ip saddr . tcp dport @mgmt_auto_v4 accept
        ip saddr @r1024_in_v4 tcp dport %d counter accept comment "ID=1024"
        counter drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
    }
}
""" % (peers, port)


def iptables_file(elements, port=8080):
    lines = ["*filter", ":INPUT DROP [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-A INPUT -i lo -j ACCEPT"]
    lines += ["-A INPUT -s %s/32 -p tcp --dport %d -j ACCEPT" % (addr, port) for addr in elements]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def timed(func, repeat):
    runs = []
    result = None
    for dummy in range(repeat):
        start = time.perf_counter()
        result = func()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), result


# ----------------------------------------------------------------------------- workers (inside a namespace)


def worker_nft(count, repeat):
    elements = addresses(count)
    text = ruleset(elements)
    changed = ruleset(elements[:-1] + ["192.0.2.1"])
    work = tempfile.mkdtemp(prefix="mseg-bench-")
    nft = engine.Nft().path

    def request(content):
        return engine.Request(content, state_dir=os.path.join(work, "etc-mseg"), unit_dir=os.path.join(work, "units"))

    out = {}
    try:
        start = time.perf_counter()
        first = engine.apply(request(text))
        out["first"] = time.perf_counter() - start
        assert first["changed"] and first["elements"] == count, first
        out["unchanged"], res = timed(lambda: engine.apply(request(text)), repeat)
        assert res["changed"] is False, res

        def after_foreign_change():
            subprocess.run([nft, "add", "table", "ip", "bench_other"], check=True)
            subprocess.run([nft, "delete", "table", "ip", "bench_other"], check=True)
            start = time.perf_counter()
            res = engine.apply(request(text))
            return time.perf_counter() - start, res
        listed = [after_foreign_change() for dummy in range(repeat)]
        assert all(res["changed"] is False for seconds, res in listed)
        out["unchanged_listed"] = statistics.median(seconds for seconds, res in listed)

        alternate = itertools.cycle([changed, text])
        out["replace"], res = timed(lambda: engine.apply(request(next(alternate))), repeat)
        assert res["changed"] is True

        full = peers.build_transaction(text, [])  # the very text the engine judges and loads

        def bare_first():
            subprocess.run([nft, "delete", "table", "inet", "mseg"], check=True)
            start = time.perf_counter()
            subprocess.run([nft, "-f", "-"], input=full, text=True, check=True)
            return time.perf_counter() - start
        out["nft_first"] = statistics.median(bare_first() for dummy in range(repeat))

        # The same ruleset in the JSON form (what a renderer writing the JSON form hands the host): judged as it is,
        # one nft -j -f, no scratch parse. Each first apply starts from no table and an empty state directory.
        document = json.dumps({"nftables": jsonform.check(jsonform.parse(full, nft))}) + "\n"

        def json_first():
            subprocess.run([nft, "delete", "table", "inet", "mseg"], check=True)
            fresh = tempfile.mkdtemp(dir=work)
            start = time.perf_counter()
            res = engine.apply(engine.Request(document, state_dir=os.path.join(fresh, "etc-mseg"),
                                              unit_dir=os.path.join(fresh, "units")))
            return time.perf_counter() - start, res, fresh
        firsts = [json_first() for dummy in range(repeat)]
        assert all(res["changed"] and res["elements"] == count for seconds, res, fresh in firsts)
        out["json_first"] = statistics.median(seconds for seconds, res, fresh in firsts)
        fresh = firsts[-1][2]
        out["json_unchanged"], res = timed(lambda: engine.apply(engine.Request(
            document, state_dir=os.path.join(fresh, "etc-mseg"), unit_dir=os.path.join(fresh, "units"))), repeat)
        assert res["changed"] is False, res
        out["scratch_parse"], items = timed(lambda: jsonform.parse(full, nft), repeat)
        document = jsonform.transaction(jsonform.check(items))
        out["nft_json_load"] = timed(lambda: subprocess.run([nft, "-j", "-f", "-"], input=document, text=True,
                                                            check=True), repeat)[0]
        out["nft_load"] = timed(lambda: subprocess.run([nft, "-f", "-"], input=full, text=True, check=True),
                                repeat)[0]
        out["nft_list"] = timed(lambda: subprocess.run([nft, "-s", "list", "table", "inet", "mseg"],
                                                       capture_output=True, check=True), repeat)[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def worker_ipt(count, repeat, binary):
    text = iptables_file(addresses(count))
    out = {}
    start = time.perf_counter()
    subprocess.run([binary], input=text, text=True, check=True)
    out["first"] = time.perf_counter() - start
    out["unchanged"] = timed(lambda: subprocess.run([binary], input=text, text=True, check=True), repeat)[0]
    rules = subprocess.run([binary.replace("-restore", "-save")], capture_output=True, text=True, check=True)
    assert rules.stdout.count("\n-A INPUT -s ") >= count, "iptables did not load every rule"
    return out


# ----------------------------------------------------------------------------- driver


def in_namespace(tag, argv):
    name = "msbench%d-%s" % (os.getpid(), tag)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", name, sys.executable, os.path.abspath(__file__)] + argv,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit("benchmark worker %s failed: %s" % (tag, proc.stderr.strip()))
        return json.loads(proc.stdout)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--elements", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worker", choices=["nft", "ipt"], help=argparse.SUPPRESS)
    parser.add_argument("--binary", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "nft":
        print(json.dumps(worker_nft(args.elements, args.repeat)))
        return
    if args.worker == "ipt":
        print(json.dumps(worker_ipt(args.elements, args.repeat, args.binary)))
        return
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/apply.py needs root (it creates network namespaces)")

    common = ["--elements", str(args.elements), "--repeat", str(args.repeat)]
    nft = in_namespace("nft", common + ["--worker", "nft"])
    baselines = []
    for tag, binary in (("ipt", "iptables-restore"), ("iptlegacy", "iptables-legacy-restore")):
        path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
        if path:
            baselines.append((binary, in_namespace(tag, common + ["--worker", "ipt", "--binary", path])))

    print("apply benchmark: %d set elements (nft_apply) vs %d linear rules (iptables), median of %d"
          % (args.elements, args.elements, args.repeat))
    print()
    header = "%-46s %10s" % ("measurement", "seconds")
    for name in dict(baselines):
        header += " %14s" % ("ratio vs " + name.split("-")[1])
    print(header)
    print("-" * len(header))

    def row(label, value, key):
        line = "%-46s %10.3f" % (label, value)
        for base in dict(baselines).values():
            line += " %14s" % ("%.2fx" % (value / base[key]) if key else "")
        print(line)

    row("nft_apply: first apply (check+load+record)", nft["first"], "first")
    row("nft_apply: re-run, unchanged", nft["unchanged"], "unchanged")
    row("nft_apply: re-run, unchanged, other table moved", nft["unchanged_listed"], "unchanged")
    row("nft_apply: replace (one element changed)", nft["replace"], "first")
    row("nft_apply, JSON content: first apply", nft["json_first"], "first")
    row("nft_apply, JSON content: re-run, unchanged", nft["json_unchanged"], "unchanged")
    for name, base in baselines:
        row("%s: load" % name, base["first"], None)
        row("%s: re-run (always reloads)" % name, base["unchanged"], None)
    print()
    print("bare nft -f of the same transaction, no table before: %.3f s (first apply / it: %.2fx)"
          % (nft["nft_first"], nft["first"] / nft["nft_first"]))
    print("parts: scratch parse (nft -f + nft -j list in a scratch namespace) %.3f s, nft -j -f of the judged "
          "document %.3f s, nft -f replacing the table %.3f s, nft -s list %.3f s"
          % (nft["scratch_parse"], nft["nft_json_load"], nft["nft_load"], nft["nft_list"]))
    for label, first, unchanged in (("text content", "first", "unchanged"),
                                    ("JSON content", "json_first", "json_unchanged")):
        ratio = nft[first] / nft["nft_first"]
        print("targets, %s: first apply < 1 s: %s; first apply within 1.3x bare nft -f: %s (%.2fx); unchanged "
              "re-run < 0.2 s: %s" % (label, "met" if nft[first] < 1 else "NOT met (%.2f s)" % nft[first],
                                      "met" if ratio <= 1.3 else "NOT met", ratio,
                                      "met" if nft[unchanged] < 0.2 else "NOT met (%.3f s)" % nft[unchanged]))


if __name__ == "__main__":
    main()
