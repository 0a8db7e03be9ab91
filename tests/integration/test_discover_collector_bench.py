"""Smoke run of benchmarks/discover_collector.py (not a benchmark): one short round of each variant, so the script
cannot rot.

The real collector must record connections of the traffic (the script fails otherwise), the ratios must print, and
no namespace may be left behind.
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
SCRIPT = os.path.join(ROOT, "benchmarks", "discover_collector.py")


def test_smoke_the_collector_records_the_traffic_and_the_ratios_print():
    before = bench_namespaces()
    proc = subprocess.run([sys.executable, SCRIPT, "--rounds", "1", "--seconds", "1", "--interval", "0.5"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    recorded = re.search(r"recorded ([0-9]+) of ([0-9]+) connections", out)
    assert recorded and int(recorded.group(1)) > 0 and int(recorded.group(2)) > 0, out
    for name in ("rate with / without the collector", "collector CPU / traffic CPU", "collector peak RSS / traffic"):
        assert re.search(r"^ratio: %s.* [0-9]+\.[0-9]+" % re.escape(name), out, re.M), out
    assert bench_namespaces() == before
