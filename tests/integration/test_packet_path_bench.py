"""Smoke run of benchmarks/packet_path.py (not a benchmark): one tiny size, one short round, so the script cannot rot.

Every variant must connect, its client must be counted by the rule meant to accept it (the script checks and fails
otherwise), the tables must print, and no namespace may be left behind.
"""

import os
import re
import subprocess
import sys

import pytest

from netns import available, bench_namespaces

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "packet_path.py")


def test_smoke_every_variant_connects_and_the_table_prints():
    before = bench_namespaces()
    proc = subprocess.run([sys.executable, SCRIPT, "--sizes", "10x10", "--rounds", "1", "--seconds", "0.3"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    legacy = "iptables-legacy: not available" not in out
    expected = ["none", "conntrack", "ours", "iptables-nft"] + (["iptables-legacy"] if legacy else [])
    rows = dict(re.findall(r"^  (\S+)\s+(?:-|[0-9.]+)\s+([0-9]+)\s", out, re.M))
    for variant in expected:
        assert int(rows.get(variant, 0)) > 0, "no connection rate for %s in:\n%s" % (variant, out)
    assert any(name.startswith("ipset+iptables-") for name in rows), out
    assert re.search(r"^  10x10\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+", out, re.M), out
    assert "ours / no-firewall: conn rate" in out
    assert "targets (" in out
    assert bench_namespaces() <= before


def test_bad_size_is_one_clear_message():
    proc = subprocess.run([sys.executable, SCRIPT, "--sizes", "10x100"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1
    assert "rules <= peers" in proc.stderr and "Traceback" not in proc.stderr
