"""``mseg trace`` runs programs as root: nothing of the caller's (directory, PYTHONPATH) may run with them.

The attack (issue 15, item 2): a ``socket.py`` planted in the operator's current directory or on PYTHONPATH was
imported by trace's listener and sender, as uid 0. Here the trace runs for real on the loopback (the namespaces
and nft are faked; the listener and the sender are the real programs, started with the real command lines).
"""

import json
import socket
import subprocess

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.agent import trace
from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform
from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner as nft_runner

TABLE = [{"table": {"family": "inet", "name": "mseg"}}]


class FakeNft:
    """Just enough of nft for trace (the agent's tests run with the host closure only, without tests/unit/nft):
    the scratch parse lists the canaries (unless ``canaries`` is false: a text that flushed them) and
    ``scratch_items``, an empty table inet mseg by default; loads succeed."""

    path = "/usr/sbin/nft"

    def __init__(self):
        self.scratch_items = TABLE
        self.canaries = True

    def __call__(self, argv, input=None, **_options):
        if argv[0].endswith("/unshare"):
            canaries = [{kind: {"family": family, "table" if kind == "chain" else "name": jsonform.CANARY_NAME,
                                **({"name": "keep"} if kind == "chain" else {})}}
                        for family in jsonform.CANARY_FAMILIES for kind in ("table", "chain")]
            listed = (canaries if self.canaries else []) + self.scratch_items
            return subprocess.CompletedProcess(argv, 0, json.dumps({"nftables": listed}), "")
        if argv[1:3] == ["-j", "list"]:
            return subprocess.CompletedProcess(argv, 0, '{"nftables": []}', "")
        return subprocess.CompletedProcess(argv, 0, "", "")


PLANTED = "import pathlib\npathlib.Path(%r).write_text('imported as uid 0')\nraise SystemExit('planted')\n"


def _outside_netns(argv):
    """The command ``ip netns exec NS ...`` runs, without the namespace; None for the namespace set-up."""
    if argv[:3] == ["ip", "netns", "exec"] and argv[4] == trace.python_program("x")[0]:
        return argv[4:]
    return None


def _nft_command(argv, fake):
    """The nft (or scratch-parse) command ``argv`` runs, inside a namespace or not; None for anything else."""
    inner = argv[4:] if argv[:3] == ["ip", "netns", "exec"] else argv
    if inner and (inner[0] == fake.path or inner[0].endswith("/unshare")):
        return inner
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
    nft = FakeNft()
    monkeypatch.setattr(nft_runner, "find_nft", lambda: nft.path)

    def runner(argv, **options):
        started.append(options)
        real = _outside_netns(argv)
        if real is None:
            command = _nft_command(argv, nft)
            return nft(command, **options) if command else subprocess.CompletedProcess(argv, 0, "", "")
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


@pytest.mark.parametrize("scratch", ["loads", "nat chain", "flushes the ruleset"])
def test_trace_loads_only_the_judged_json_form(monkeypatch, scratch):
    """Issue 15 item 1 on trace's path: the text is judged (scratch parse, contract allowlist) and only its JSON
    form is loaded into the trace namespace; a text the contract refuses is never loaded there (it used to be
    ``nft -f -`` as root)."""
    nft = FakeNft()
    monkeypatch.setattr(nft_runner, "find_nft", lambda: nft.path)
    if scratch == "nat chain":
        nft.scratch_items = [{"table": {"family": "inet", "name": "mseg"}},
                             {"chain": {"family": "inet", "table": "mseg", "name": "pre", "type": "nat",
                                        "hook": "prerouting", "prio": -100, "policy": "accept"}}]
    elif scratch == "flushes the ruleset":
        nft.canaries = False
    loads = []

    def runner(argv, **options):
        command = _nft_command(argv, nft)
        if command is None:
            return subprocess.CompletedProcess(argv, 0, "", "")
        if command[1:] in (["-f", "-"], ["-j", "-f", "-"]):
            loads.append((argv[:4], command[1:], options.get("input")))
        return nft(command, **options)

    def popen(*_args, **_options):
        raise AssertionError("no listener for icmp")

    tracer = trace.Trace("table inet mseg {\n}\n", runner=runner, popen=popen)
    if scratch != "loads":
        with pytest.raises(AgentError, match="did not load in the scratch namespace: .*not one mseg.fleet loads"):
            tracer.run("192.0.2.1", "192.0.2.2", "ingress", "icmp", None)
        assert loads == []
        return
    tracer.run("192.0.2.1", "192.0.2.2", "ingress", "icmp", None)
    ((where, how, document),) = loads
    assert where == ["ip", "netns", "exec", tracer.ns["host"]] and how == ["-j", "-f", "-"]
    assert document.startswith('{"nftables": ')
