"""mseg.fleet.discover_collect: the collector's unit carries its bounds, and a timer removes its files after the window."""

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
