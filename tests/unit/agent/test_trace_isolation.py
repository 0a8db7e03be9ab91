"""``mseg trace`` runs programs as root: nothing of the caller's (directory, PYTHONPATH) may run with them.

The attack (issue 15, item 2): a ``socket.py`` planted in the operator's current directory or on PYTHONPATH was
imported by trace's listener and sender, as uid 0. Here the trace runs for real on the loopback (the namespaces
and nft are faked; the listener and the sender are the real programs, started with the real command lines).
"""

import socket
import subprocess

from ansible_collections.mseg.fleet.plugins.module_utils.agent import trace

PLANTED = "import pathlib\npathlib.Path(%r).write_text('imported as uid 0')\nraise SystemExit('planted')\n"


def _outside_netns(argv):
    """The command ``ip netns exec NS ...`` runs, without the namespace; None for the namespace set-up."""
    if argv[:3] == ["ip", "netns", "exec"] and argv[4] == trace.python_program("x")[0]:
        return argv[4:]
    return None


def _free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_trace_programs_never_import_a_planted_module(tmp_path, monkeypatch):
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "pwned"
    (planted / "socket.py").write_text(PLANTED % str(marker))
    monkeypatch.chdir(planted)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    monkeypatch.setenv("PYTHONSTARTUP", str(planted / "socket.py"))
    started = []

    def runner(argv, **options):
        started.append(options)
        real = _outside_netns(argv)
        if real is None:
            return subprocess.CompletedProcess(argv, 0, "", "")
        return subprocess.run(real, check=options.pop("check"), **options)

    def popen(argv, **options):
        started.append(options)
        return subprocess.Popen(_outside_netns(argv), **options)

    port = _free_udp_port()
    result = trace.Trace("table inet mseg {\n}\n", runner=runner, popen=popen).run(
        "127.0.0.1", "127.0.0.2", "ingress", "udp", port)
    assert not marker.exists()
    assert result["result"] == "open"
    assert all(options.get("cwd") == "/" and options.get("env") == trace.ROOT_ENV for options in started)
