"""Apply benchmark: nft_apply's engine against iptables-restore of the equivalent linear rules.

    sudo python benchmarks/apply.py [--elements 100000] [--repeat 5]

Runs as root in two throw-away network namespaces (nothing outside them is touched):

* nft_apply: the engine the module runs on the host (``plugins/module_utils/apply/``) applying the ruleset
  as the product renders it (``compile_fleet`` and ``render_plan`` of a policy whose one rule allows tcp/8080
  from N addresses: the text the policy role, the rollout and the agent pass): the text read without nft
  (``nft/textform.py``), its JSON form judged (``nft/jsonform.py``), the one ``nft -j -f`` transaction,
  recording, persisting. Each first apply starts from no table and an empty state directory. Then re-runs:
  unchanged (the usual case: the kernel's ruleset generation id is unchanged, so nothing is parsed or
  listed), unchanged after another table changed (the table is listed and compared), and a change of one
  element (a full replace).
* nft_apply with the same text parsed by nft in a scratch namespace (``Nft(translate=False)``: the path
  before the translator, and still the one for a text it does not read): first apply and unchanged re-run.
* nft_apply with the same ruleset in the JSON form (``{"nftables": [...]}``, here made once from the text by nft
  itself, as a renderer writing the JSON form would hand it to the host): judged as it is (``jsonform``,
  ``contract.check_ruleset``), one ``nft -j -f``, no scratch parse; first apply and unchanged re-run.
* bare nft: ``nft -f`` of the same transaction text into a namespace without the table (what a first
  apply with no checks at all would cost), and the engine's parts on their own: the translation (read,
  judge, write the JSON), the scratch parse, ``nft -j -f`` of the judged document, ``nft -s list``.
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
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform, textform  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402


def addresses(count):
    """``count`` distinct, non-adjacent IPv4 host addresses (so the interval set cannot merge them)."""
    return ["10.%d.%d.%d" % ((i * 2) >> 16 & 255, (i * 2) >> 8 & 255, (i * 2) & 255) for i in range(count)]


def ruleset(elements, port=8080):
    """The ruleset as the product renders it (``compile_fleet`` and ``render_plan``, what the policy role, the rollout
    and the agent pass to nft_apply): one rule allowing tcp/``port`` from ``elements``, default deny."""
    policy = {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": [
        {"id": 1024, "name": "bench", "from": {"cidr": elements}, "to": {"hosts": ["bench"]},
         "ports": ["tcp/%d" % port]}]}
    compiled = compile_fleet(policy, {"bench": {"addresses": ["192.0.2.1"], "mode": "enforce"}})
    return render_plan(compiled.plans["bench"])[0]


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

    def request(content, where=work):
        return engine.Request(content, state_dir=os.path.join(where, "etc-mseg"),
                              unit_dir=os.path.join(where, "units"))

    def first_apply(content, translate=True):
        """One first apply of ``content`` from no table and an empty state directory: (seconds, state dir)."""
        subprocess.run([nft, "delete", "table", "inet", "mseg"], check=False, capture_output=True)
        fresh = tempfile.mkdtemp(dir=work)
        start = time.perf_counter()
        res = engine.apply(request(content, fresh), Nft(translate=translate))
        seconds = time.perf_counter() - start
        assert res["changed"] and res["elements"] == count, res
        return seconds, fresh

    def bare_first():
        subprocess.run([nft, "delete", "table", "inet", "mseg"], check=False, capture_output=True)
        start = time.perf_counter()
        subprocess.run([nft, "-f", "-"], input=full, text=True, check=True)
        return time.perf_counter() - start

    out = {}
    try:
        full = peers.build_transaction(text, [])  # the very text the engine judges and loads
        assert textform.objects(full, textform.protocol_names()) is not None, "the rendered text is not translated"
        # The same ruleset in the JSON form (what a renderer writing the JSON form hands the host): judged as it is,
        # one nft -j -f, no scratch parse.
        document = json.dumps({"nftables": jsonform.check(jsonform.parse(full, nft))}) + "\n"

        # First applies, interleaved so that the machine's load weighs on each alike: a bare nft -f; the same text
        # parsed by nft in a scratch namespace (the path before the translator, and still the one for a text it does
        # not read); the JSON form; and, last, the product path: the rendered text read without nft (textform).
        firsts = {"nft_first": [], "scratch_first": [], "json_first": [], "first": []}
        fresh = None
        for dummy in range(repeat):
            firsts["nft_first"].append(bare_first())
            firsts["scratch_first"].append(first_apply(text, translate=False)[0])
            firsts["json_first"].append(first_apply(document)[0])
            seconds, fresh = first_apply(text)
            firsts["first"].append(seconds)
        out.update((key, statistics.median(runs)) for key, runs in firsts.items())

        out["unchanged"], res = timed(lambda: engine.apply(request(text, fresh)), repeat)
        assert res["changed"] is False, res

        def after_foreign_change():
            subprocess.run([nft, "add", "table", "ip", "bench_other"], check=True)
            subprocess.run([nft, "delete", "table", "ip", "bench_other"], check=True)
            start = time.perf_counter()
            res = engine.apply(request(text, fresh))
            return time.perf_counter() - start, res
        listed = [after_foreign_change() for dummy in range(repeat)]
        assert all(res["changed"] is False for seconds, res in listed)
        out["unchanged_listed"] = statistics.median(seconds for seconds, res in listed)

        alternate = itertools.cycle([changed, text])
        out["replace"], res = timed(lambda: engine.apply(request(next(alternate), fresh)), repeat)
        assert res["changed"] is True

        fresh = first_apply(text, translate=False)[1]
        out["scratch_unchanged"], res = timed(lambda: engine.apply(request(text, fresh), Nft(translate=False)),
                                              repeat)
        assert res["changed"] is False, res
        fresh = first_apply(document)[1]
        out["json_unchanged"], res = timed(lambda: engine.apply(request(document, fresh)), repeat)
        assert res["changed"] is False, res

        protocols = textform.protocol_names()
        out["translate"] = timed(lambda: jsonform.transaction(jsonform.check(
            textform.objects(full, protocols), require_table=False, scratch=False)), repeat)[0]
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
    header = "%-52s %10s" % ("measurement", "seconds")
    for name in dict(baselines):
        header += " %14s" % ("ratio vs " + name.split("-")[1])
    print(header)
    print("-" * len(header))

    def row(label, value, key):
        line = "%-52s %10.3f" % (label, value)
        for base in dict(baselines).values():
            line += " %14s" % ("%.2fx" % (value / base[key]) if key else "")
        print(line)

    row("nft_apply, rendered text: first apply", nft["first"], "first")
    row("nft_apply, rendered text: re-run, unchanged", nft["unchanged"], "unchanged")
    row("nft_apply, rendered text: re-run, other table moved", nft["unchanged_listed"], "unchanged")
    row("nft_apply, rendered text: replace (one element)", nft["replace"], "first")
    row("nft_apply, text, scratch parse: first apply", nft["scratch_first"], "first")
    row("nft_apply, text, scratch parse: re-run, unchanged", nft["scratch_unchanged"], "unchanged")
    row("nft_apply, JSON content: first apply", nft["json_first"], "first")
    row("nft_apply, JSON content: re-run, unchanged", nft["json_unchanged"], "unchanged")
    for name, base in baselines:
        row("%s: load" % name, base["first"], None)
        row("%s: re-run (always reloads)" % name, base["unchanged"], None)
    print()
    print("bare nft -f of the same transaction, no table before: %.3f s (first apply / it: %.2fx)"
          % (nft["nft_first"], nft["first"] / nft["nft_first"]))
    print("first apply / bare nft -f: rendered text %.2fx, text with the scratch parse %.2fx, JSON content %.2fx"
          % (nft["first"] / nft["nft_first"], nft["scratch_first"] / nft["nft_first"],
             nft["json_first"] / nft["nft_first"]))
    print("parts: text read without nft, judged, JSON written (textform + jsonform) %.3f s; scratch parse (nft -f + "
          "nft -j list in a scratch namespace) %.3f s; nft -j -f of the judged document %.3f s; nft -f replacing "
          "the table %.3f s; nft -s list %.3f s"
          % (nft["translate"], nft["scratch_parse"], nft["nft_json_load"], nft["nft_load"], nft["nft_list"]))
    for label, first, unchanged in (("rendered text (the product path)", "first", "unchanged"),
                                    ("text, scratch parse", "scratch_first", "scratch_unchanged"),
                                    ("JSON content", "json_first", "json_unchanged")):
        ratio = nft[first] / nft["nft_first"]
        print("targets, %s: first apply < 1 s: %s; first apply within 1.3x bare nft -f: %s (%.2fx); unchanged "
              "re-run < 0.2 s: %s" % (label, "met" if nft[first] < 1 else "NOT met (%.2f s)" % nft[first],
                                      "met" if ratio <= 1.3 else "NOT met", ratio,
                                      "met" if nft[unchanged] < 0.2 else "NOT met (%.3f s)" % nft[unchanged]))


if __name__ == "__main__":
    main()
