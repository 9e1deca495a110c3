"""Embedded Nomad: placement throughput and registration-to-passing latency.

``python -m bench nomad``. Throughput runs the server as its own process (``python -m
devstack.nomad``) and drives it from a concurrent httpx load generator over loopback; latency
runs the embedded Consul and Nomad in-process and times a raw_exec HTTP task from its job
registration until Consul's own HTTP check reports it passing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

JOBS = 1000
CONCURRENCY = 32
LATENCY_RUNS = 3
USERS = 1000
PORTS_PER_USER = 3
SECOND = 1_000_000_000
PLACEMENT_TARGET = 500.0
PASSING_TARGET = 2.0

HTTP_SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(os.environ['NOMAD_PORT_http'])), H).serve_forever()\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bench_job(i: int) -> dict[str, Any]:
    return {
        "ID": f"bench-{i:05d}",
        "Datacenters": ["dc1"],
        "TaskGroups": [
            {
                "Name": "app",
                "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
                "EphemeralDisk": {"SizeMB": 10},
                "Tasks": [
                    {
                        "Name": "main",
                        "Driver": "docker",
                        "Config": {"image": "nginx:1.27"},
                        "Resources": {"CPU": 10, "MemoryMB": 10},
                    }
                ],
            }
        ],
    }


async def _throughput(url: str) -> tuple[float, float, float]:
    """(registrations/s acknowledged, placements/s, running/s) for :data:`JOBS` jobs."""
    # aiohttp's client, not httpx: on two shared cores the generator must cost less than the
    # server it measures.
    import aiohttp

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        bodies = [json.dumps({"Job": _bench_job(i)}).encode() for i in range(JOBS)]
        pending = list(reversed(bodies))
        headers = {"Content-Type": "application/json"}

        async def worker() -> None:
            while pending:
                body = pending.pop()
                async with session.post("/v1/jobs", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"register failed: {resp.status}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        acked = time.perf_counter() - started
        placed_at = running_at = 0.0
        while time.perf_counter() < started + 40:
            params = {"task_states": "false"}
            async with session.get("/v1/allocations", params=params) as resp:
                stubs = await resp.json()
            now = time.perf_counter() - started
            if not placed_at and len(stubs) >= JOBS:
                placed_at = now
            if sum(1 for a in stubs if a["ClientStatus"] == "running") >= JOBS:
                running_at = now
                break
            await asyncio.sleep(0.1)
    return (
        JOBS / acked,
        JOBS / placed_at if placed_at else 0.0,
        JOBS / running_at if running_at else 0.0,
    )


def _measure_throughput() -> tuple[float, float, float]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.nomad",
            "--port",
            str(port),
            "--nodes",
            "10",
            "--node-cpu",
            "100000",
            "--node-memory",
            "100000",
            "--node-disk",
            "1000000",
            "--docker-start-delay",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"embedded nomad did not start: {line!r}")
        return asyncio.run(_throughput(f"http://127.0.0.1:{port}"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _proc_stats(pid: int) -> tuple[float, int]:
    """(resident MiB, open fds) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def _user_job(i: int) -> dict[str, Any]:
    job = _bench_job(i)
    job["ID"] = f"user-{i:05d}"
    labels = ["hmi", "broker", "core"][:PORTS_PER_USER]
    job["TaskGroups"][0]["Networks"] = [{"DynamicPorts": [{"Label": p} for p in labels]}]
    return job


async def _containers(url: str, pid: int) -> dict[str, float]:
    """Register USERS three-port docker jobs; memory, fds and answers of their listeners."""
    import aiohttp

    before = _proc_stats(pid)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        pending = [json.dumps({"Job": _user_job(i)}).encode() for i in range(USERS)]

        async def worker() -> None:
            while pending:
                body = pending.pop()
                async with session.post(
                    "/v1/jobs", data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"register failed: {resp.status}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        running_at = 0.0
        while time.perf_counter() < started + 60:
            async with session.get("/v1/allocations", params={"task_states": "false"}) as resp:
                stubs = await resp.json()
            if sum(1 for a in stubs if a["ClientStatus"] == "running") >= USERS:
                running_at = time.perf_counter() - started
                break
            await asyncio.sleep(0.2)
        # Listeners open right after the running report; let the loop settle.
        await asyncio.sleep(1.0)
        after = _proc_stats(pid)
        async with session.get("/v1/allocations", params={"resources": "true"}) as resp:
            full = await resp.json()
        addrs = [
            (p["HostIP"], p["Value"])
            for a in full
            for p in a["AllocatedResources"]["Shared"]["Ports"] or []
        ]
        sample = addrs[:: max(1, len(addrs) // 300)]
        ok = 0
        latencies = []
        for ip, port in sample:
            t0 = time.perf_counter()
            try:
                async with (
                    aiohttp.ClientSession() as probe,
                    probe.get(f"http://{ip}:{port}/health") as resp,
                ):
                    ok += resp.status == 200
            except aiohttp.ClientError as exc:
                print("probe failed", ip, port, repr(exc))
            latencies.append(time.perf_counter() - t0)
    return {
        "running_s": running_at,
        "rss_before": before[0],
        "rss_after": after[0],
        "fds_before": before[1],
        "fds_after": after[1],
        "ports": len(addrs),
        "sampled": len(sample),
        "ok": ok,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
    }


def _measure_containers() -> dict[str, float]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.nomad",
            "--port",
            str(port),
            "--nodes",
            "10",
            "--node-cpu",
            "100000",
            "--node-memory",
            "100000",
            "--node-disk",
            "1000000",
            "--docker-start-delay",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"embedded nomad did not start: {line!r}")
        return asyncio.run(_containers(f"http://127.0.0.1:{port}", proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _containers_section() -> str:
    c = _measure_containers()
    per_user_kib = (c["rss_after"] - c["rss_before"]) * 1024 / USERS
    rows = [
        (f"{USERS} users running ({PORTS_PER_USER} ports each)", f"{c['running_s']:.1f} s", "-"),
        ("Listening ports opened", f"{c['ports']:.0f}", f"{USERS * PORTS_PER_USER}"),
        (
            "Open fds, before -> after",
            f"{c['fds_before']:.0f} -> {c['fds_after']:.0f}",
            f"<= {USERS * PORTS_PER_USER + 200} after",
        ),
        (
            "Resident memory, before -> after",
            f"{c['rss_before']:.0f} -> {c['rss_after']:.0f} MiB",
            "-",
        ),
        (
            "Memory per user (server, allocation, 3 listeners)",
            f"{per_user_kib:.0f} KiB",
            "<= 200 KiB",
        ),
        (
            "Sampled ports answering HTTP 200",
            f"{c['ok']:.0f} / {c['sampled']:.0f}",
            "all",
        ),
        ("HTTP answer from a simulated container, median", f"{c['p50_ms']:.1f} ms", "-"),
    ]
    table = "\n".join(f"| {a} | {b} | {c_} |" for a, b, c_ in rows)
    return (
        "## Embedded Nomad: simulated containers serving their ports\n\n"
        "| metric | measured | target |\n| --- | --- | --- |\n"
        f"{table}\n\n"
        f"Method: {USERS} docker jobs, each one group with {PORTS_PER_USER} dynamic ports, "
        "registered against `python -m devstack.nomad` in its own process (10 nodes, 0.2 s "
        "simulated start); once every allocation runs, the server's VmRSS and open fds are read "
        "from /proc and compared with the idle server, and every tenth port or so is asked "
        "`GET /health` over a fresh connection. Each simulated container serves its ports with "
        "one asyncio server per port sharing one small protocol class."
    )


def _measure_passing() -> list[float]:
    from devstack.consul.server import ConsulServer
    from devstack.nomad import EmbeddedNomad

    timings = []
    with (
        ConsulServer(node_name="bench") as consul,
        EmbeddedNomad(consul_addr=consul.url, nodes=1) as nomad,
        httpx.Client(timeout=10) as http,
    ):
        for run in range(LATENCY_RUNS):
            name = f"bench-web-{run}"
            job = {
                "ID": name,
                "Datacenters": ["dc1"],
                "TaskGroups": [
                    {
                        "Name": "app",
                        "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
                        "EphemeralDisk": {"SizeMB": 10},
                        "Tasks": [
                            {
                                "Name": "server",
                                "Driver": "raw_exec",
                                "Config": {"command": sys.executable, "args": ["-c", HTTP_SERVER]},
                                "Resources": {"CPU": 100, "MemoryMB": 64},
                                "Services": [
                                    {
                                        "Name": name,
                                        "PortLabel": "http",
                                        "Checks": [
                                            {
                                                "Type": "http",
                                                "Path": "/",
                                                "Interval": SECOND,
                                                "Timeout": SECOND,
                                            }
                                        ],
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
            started = time.perf_counter()
            http.post(f"{nomad.url}/v1/jobs", json={"Job": job}).raise_for_status()
            while time.perf_counter() - started < 10:
                entries = http.get(
                    f"{consul.url}/v1/health/service/{name}", params={"passing": ""}
                ).json()
                if entries:
                    timings.append(time.perf_counter() - started)
                    break
                time.sleep(0.01)
            else:
                timings.append(float("inf"))
            http.delete(f"{nomad.url}/v1/job/{name}", params={"purge": "true"})
    return timings


def run() -> str:
    acked, placed, running = _measure_throughput()
    passing = _measure_passing()
    median = statistics.median(passing)
    rows = [
        ("Job registrations acknowledged /s (1000 jobs, 32 concurrent)", f"{acked:.0f}", "-"),
        (
            "Registrations placed /s (allocation created)",
            f"{placed:.0f}",
            f">= {PLACEMENT_TARGET:.0f}",
        ),
        ("Registrations running /s (simulated docker, 0.2 s start)", f"{running:.0f}", "-"),
        (
            "Registration to Consul check passing, median (1 s interval)",
            f"{median:.2f} s",
            f"<= {PASSING_TARGET:.0f} s",
        ),
        ("Registration to Consul check passing, worst of 3", f"{max(passing):.2f} s", "-"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (
        "## Embedded Nomad\n\n"
        "| metric | measured | target |\n| --- | --- | --- |\n"
        f"{table}\n\n"
        f"Method: {JOBS} one-task docker jobs registered by {CONCURRENCY} concurrent aiohttp "
        "connections against `python -m devstack.nomad` in its own process (10 nodes), timed until "
        "`/v1/allocations` lists every allocation (placed) and every one running; the latency is "
        "from `POST /v1/jobs` of a raw_exec `http.server` task until the embedded Consul's "
        f"`/v1/health/service/<name>?passing` lists it, {LATENCY_RUNS} runs ({os.cpu_count()} "
        "cores, loopback).\n\n" + _containers_section()
    )


if __name__ == "__main__":
    print(run())
