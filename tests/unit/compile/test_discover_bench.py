"""Smoke run of benchmarks/discover.py (not a benchmark): a tiny fleet and window, so the script cannot rot.

The script fails (exit 1) when its proposal does not allow every flow above the threshold; here it must succeed and
print every line the published table is read from.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "benchmarks", "discover.py")


def test_smoke_the_benchmark_proposes_and_covers_every_flow():
    proc = subprocess.run([sys.executable, SCRIPT, "--records", "3000", "--hosts", "200", "--repeats", "1",
                           "--baseline-sample", "100"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("records 3000, hosts 200, distinct flows ")
    for start in ("read (CSV, summed):", "propose:", "read + propose:", "check (", "baseline (",
                  "baseline / (read + propose), CPU: "):
        assert any(line.startswith(start) for line in lines), (start, proc.stdout)
    assert "; uncovered 0" in proc.stdout
