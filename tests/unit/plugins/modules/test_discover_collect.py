"""mseg.fleet.discover_collect: the collector's unit carries its bounds, and a timer removes its files after the window."""

import os

from ansible_collections.mseg.fleet.plugins.modules import discover_collect


class FakeModule(object):
    def get_bin_path(self, name):
        return "/usr/bin/" + name


PARAMS = {"duration": 20, "interval": 2.0, "max_flows": 500, "memory_max": "32M", "cpu_quota": "5%", "grace": 60}


def test_the_collector_unit_is_bounded_and_ends_with_the_window():
    run, cleanup = discover_collect.unit_argv(FakeModule(), PARAMS)
    text = " ".join(run)
    for bound in ("--nice=10", "IOSchedulingClass=idle", "MemoryMax=32M", "CPUQuota=5%", "RuntimeMaxSec=80",
                  "--max-flows 500", "--seconds 20", "--interval 2.0", "--out /run/mseg-discover/records.csv"):
        assert bound in text, (bound, text)
    assert run[:3] == ["/usr/bin/systemd-run", "--unit", "mseg-discover.service"]


def test_the_cleanup_timer_removes_the_files_after_the_window_and_the_grace():
    _run, cleanup = discover_collect.unit_argv(FakeModule(), PARAMS)
    assert "--on-active=80" in cleanup
    assert cleanup[-3:] == ["/bin/rm", "-rf", "/run/mseg-discover"]


def test_collected_returns_the_audit_lines_of_the_collectors_window(tmp_path, monkeypatch):
    from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
    log = tmp_path / "runtime.log"
    inside = "2026-12-06T03:00:05Z INFO Policy Audit: ID=0 src=10.0.1.1 dst=10.0.3.1 proto=tcp dport=5432 dir=ingress"
    log.write_text("2026-12-06T02:59:59Z" + inside[20:] + "\n" + inside + "\n" + "2026-12-06T03:00:11Z" + inside[20:] + "\n")
    monkeypatch.setattr(contract, "RUNTIME_LOGS", (str(log), str(tmp_path / "absent.log")))
    status = {"started": 1796526000.4, "updated": 1796526000 + 10.9}   # 2026-12-06T03:00:00Z and 10 s later
    found = discover_collect.audit(status)
    assert found["from"] == "2026-12-06T03:00:00Z" and found["to"] == "2026-12-06T03:00:10Z"
    assert found["lines"] == [inside] and found["overflow"] == 0 and found["unreadable"] == []


HARDENING = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "roles", "agent", "templates", "etc",
                         "systemd", "system", "mseg-hardening.j2")


def test_the_collector_runs_in_the_sandbox_of_the_hosts_services():
    """Every property of the shared sandbox of mseg-agent and mseg-droplog reaches systemd-run, except the ambient
    capability (the collector runs as root, whose bounding set is CAP_NET_ADMIN alone); its directory stays
    writable."""
    run, _cleanup = discover_collect.unit_argv(FakeModule(), PARAMS)
    given = [run[index + 1] for index, word in enumerate(run) if word == "-p"]
    for name, value in discover_collect.SANDBOX:
        assert "%s=%s" % (name, value) in given
    with open(HARDENING, encoding="utf-8") as handle:
        shared = [line.strip() for line in handle if line.strip() and not line.startswith(("#", "{"))]
    assert [line for line in shared if line not in given] == ["AmbientCapabilities=CAP_NET_ADMIN"]
    assert "CapabilityBoundingSet=CAP_NET_ADMIN" in given and "ProtectSystem=strict" in given
    assert "ReadWritePaths=/run/mseg-discover" in given
