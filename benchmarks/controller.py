"""Controller benchmark: 304 polls per second that one replica serves to many keep-alive mutual-TLS agents.

    python benchmarks/controller.py [--connections 512] [--processes 2] [--duration 20] [--setup 15] [--reuse] [--keep]

Runs on the lab of the Molecule scenario ``controller`` (``molecule create`` + ``converge -s controller``
unless ``--reuse`` says it is up; ``molecule destroy`` at the end unless ``--keep``). The load client is this
file, run with the lab's own python3 on agent-01 over SSH, with agent-01's certificate (the key never leaves the
host): ``--connections`` TLS 1.3 connections, each one established once, then a loop of ``GET /v1/bundle`` with
``If-None-Match`` (what a polling agent sends when nothing changed), one request in flight per connection. It
targets ctl-01 directly (one replica), not the VIP.

Printed: 304/s over the window, latency percentiles, the CPU seconds nginx on ctl-01 used (from /proc), and the
agents one replica serves at a 5 s poll interval: measured rate x 5, and, because the client shares this
machine's CPUs with nginx and usually saturates first, nginx's CPU cost per 304 turned into polls per second
per CPU core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, ".build", "lab", "mol-controller")
ADDRESSES = {"ctl-01": "10.213.241.11", "agent-01": "10.213.241.21"}
POLL_INTERVAL = 5.0
REQUEST = "GET /v1/bundle HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: {etag}\r\n\r\n"


# ---- the load client (runs on the lab host with the lab's python3, standard library only)

async def _read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status, head


async def _connection(args, context, etag, counts, latencies, connected):
    """One agent: connect once, then poll until ``args.stop_at``; count what completes inside the window."""
    reader, writer = await asyncio.open_connection(args.host, args.port, ssl=context, server_hostname=args.host)
    connected.append(time.time())
    request = REQUEST.format(host=args.host, etag=etag).encode()
    try:
        while time.time() < args.stop_at:
            start = time.time()
            writer.write(request)
            status = (await _read_head(reader))[0]
            end = time.time()
            if start >= args.start_at and end <= args.stop_at:
                latencies.append(end - start)
                counts[status] = counts.get(status, 0) + 1
    finally:
        writer.close()


async def _client_async(args):
    context = ssl.create_default_context(cafile=args.cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(args.cert, args.key)
    reader, writer = await asyncio.open_connection(args.host, args.port, ssl=context, server_hostname=args.host)
    writer.write(("GET /v1/bundle HTTP/1.1\r\nHost: %s\r\n\r\n" % args.host).encode())
    status, head = await _read_head(reader)
    writer.close()
    etag = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
            if line.lower().startswith(b"etag:")][0]
    if status != 200:
        raise SystemExit("the first GET answered %d, not 200" % status)
    counts, latencies, connected = {}, [], []
    tasks = [asyncio.ensure_future(_connection(args, context, etag, counts, latencies, connected))
             for _index in range(args.connections)]
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    cpu = os.times()
    await asyncio.gather(*tasks)
    cpu_after = os.times()
    return {"counts": counts, "latencies": sorted(latencies), "connected_at": max(connected),
            "client_cpu": cpu_after.user + cpu_after.system - cpu.user - cpu.system}


def _client_process(args, pipe_w):
    result = asyncio.run(_client_async(args))
    os.write(pipe_w, json.dumps(result).encode())
    os.close(pipe_w)


def run_client(args):
    """Fork ``args.processes`` workers sharing the connections; print one JSON result."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per = max(1, args.connections // args.processes)
    args.connections = per
    pipes = []
    for _worker in range(args.processes):
        read_fd, write_fd = os.pipe()
        if os.fork() == 0:
            os.close(read_fd)
            _client_process(args, write_fd)
            os._exit(0)
        os.close(write_fd)
        pipes.append(read_fd)
    results = []
    for read_fd in pipes:
        data = b""
        while True:
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            data += chunk
        results.append(json.loads(data))
    for _pipe in pipes:
        os.wait()
    counts = {}
    for result in results:
        for status, number in result["counts"].items():
            counts[status] = counts.get(status, 0) + number
    latencies = sorted(x for result in results for x in result["latencies"])
    elapsed = args.stop_at - args.start_at

    def percentile(p):
        return latencies[min(len(latencies) - 1, int(p / 100.0 * len(latencies)))] * 1000 if latencies else None

    print(json.dumps({"connections": per * args.processes, "processes": args.processes, "elapsed": elapsed,
                      "counts": counts, "rate_304": counts.get("304", 0) / elapsed,
                      "p50_ms": percentile(50), "p99_ms": percentile(99),
                      "connected_at": max(result["connected_at"] for result in results),
                      "client_cpu": sum(result["client_cpu"] for result in results)}))


# ---- the orchestration (runs on the control node)

def _ssh(host, command, stdin=None):
    key = os.path.join(LAB, "id_ed25519")
    run = subprocess.run(["ssh", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "BatchMode=yes", "-i", key, "root@" + ADDRESSES[host], command],
                         input=stdin, capture_output=True, check=False)
    if run.returncode != 0:
        raise SystemExit("ssh %s %r failed (%d): %s" % (host, command, run.returncode, run.stderr.decode()[-2000:]))
    return run.stdout.decode()


def _nginx_cpu_seconds():
    """utime + stime of every nginx process on ctl-01, in seconds."""
    out = _ssh("ctl-01", "for p in $(pgrep -x nginx); do cut -d' ' -f14,15 /proc/$p/stat; done; getconf CLK_TCK")
    lines = out.split()
    ticks = float(lines[-1])
    return sum(int(x) for x in lines[:-1]) / ticks


def _molecule(*args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"))
    subprocess.run(["molecule"] + list(args) + ["-s", "controller"], cwd=ROOT, env=env, check=True)


def orchestrate(args):
    if not args.reuse:
        _molecule("create")
        _molecule("converge")
    try:
        with open(os.path.abspath(__file__), "rb") as handle:
            source = handle.read()
        # The lab hosts share this machine's clock: the window is given as absolute times, and nginx's CPU is
        # read on ctl-01 at both ends of it, so the connection set-up (TLS handshakes) is not counted.
        start_at = time.time() + args.setup
        stop_at = start_at + args.duration
        _ssh("agent-01", "cat > /run/mseg-controller-bench.py", stdin=source)
        command = ("python3 /run/mseg-controller-bench.py --client --host ctl-01 --port 8443 --connections %d --processes %d "
                   "--start-at %f --stop-at %f" % (args.connections, args.processes, start_at, stop_at))
        client = subprocess.Popen(["ssh", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                   "-o", "BatchMode=yes", "-i", os.path.join(LAB, "id_ed25519"),
                                   "root@" + ADDRESSES["agent-01"], command],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(max(0.0, start_at - time.time()))
        before = _nginx_cpu_seconds()
        time.sleep(max(0.0, stop_at - time.time()))
        nginx_cpu = _nginx_cpu_seconds() - before
        out, err = client.communicate(timeout=args.setup + args.duration + 120)
        if client.returncode != 0 or not out.strip():
            raise SystemExit("the load client failed: %s" % err.decode()[-2000:])
        result = json.loads(out)
        load = os.getloadavg()[0]
        if result["connected_at"] > start_at:
            raise SystemExit("the last connection was established %.1f s into the measurement window, so the window "
                             "measured TLS handshakes: run again with a longer --setup"
                             % (result["connected_at"] - start_at))
    finally:
        if not args.keep and not args.reuse:
            _molecule("destroy")
    rate = result["rate_304"]
    cost = nginx_cpu / (rate * args.duration) if rate else float("inf")
    workers = int(_ssh("ctl-01", "pgrep -c -x nginx").strip()) - 1
    print("controller benchmark: one replica (ctl-01, %d nginx workers), %d keep-alive mutual-TLS connections, "
          "%.0f s measured after %.0f s of set-up; load average %.1f on %d CPUs"
          % (workers, result["connections"], args.duration, args.setup, load, os.cpu_count()))
    print("  304/s served:           %.0f  (counts %s)" % (rate, result["counts"]))
    print("  latency p50 / p99:      %.2f ms / %.2f ms" % (result["p50_ms"], result["p99_ms"]))
    print("  nginx CPU per 304:      %.1f us  (%.1f CPU-s of nginx; load client %.1f CPU-s; same 2 cores)"
          % (cost * 1e6, nginx_cpu, result["client_cpu"]))
    print("  agents at a %.0f s poll:  %.0f measured (rate x %.0f); %.0f per nginx CPU core (1 / cost x %.0f)"
          % (POLL_INTERVAL, rate * POLL_INTERVAL, POLL_INTERVAL, POLL_INTERVAL / cost, POLL_INTERVAL))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--setup", type=float, default=15.0, help="seconds for the connections before the window")
    parser.add_argument("--reuse", action="store_true", help="the controller scenario's lab is up and converged")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--stop-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--host", default="ctl-01", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8443, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", default="/etc/mseg/tls/ca.crt", help=argparse.SUPPRESS)
    parser.add_argument("--cert", default="/etc/mseg/tls/agent.crt", help=argparse.SUPPRESS)
    parser.add_argument("--key", default="/etc/mseg/tls/agent.key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        run_client(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
