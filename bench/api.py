"""Intake API benchmarks: status reads, event fan-out to 1,000 streams, memory, Consul cost.

The embedded Consul, the API instance (``bench._api_instance``: the real server, its Consul
requests counted) and the load generator (plus its stream processes) are separate processes
on loopback, sharing the machine's cores.

* **GET /api/v1/requests/<id>**: ``READ_CLIENTS`` keep-alive connections (one request in
  flight each), spread over ``STREAM_PROCESSES`` lean generator processes
  (``bench._get_client``), read ``READS`` statuses of random users among ``USERS`` (all in
  line), timed from the first request to the last answer. The instance's Consul requests over
  the run are read from its ``/metrics`` before and after: a status is served from the watch
  cache.
* **KV change -> event at 1,000 streams**: ``STREAMS`` event streams (one per user, 1,000
  users in line) held open by ``STREAM_PROCESSES`` lean generator processes
  (``bench._sse_client``); each round rewrites the waiting list so that every user's position
  changes, and times, for each stream, the read of the event's bytes in its generator against
  the moment just before the main process issued the PUT (the host's one monotonic clock).
  ``ROUNDS`` rounds.
* **Memory**: the instance's RSS with the users loaded, then with the streams open.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import psutil

from bench.framework import consul_process, percentile
from devstack.process import free_ports

USERS = 1000
READS = 20000
READ_CLIENTS = 32
STREAMS = 1000
ROUNDS = 5
# Streams are held, and reads made, by this many generator processes (one would be its own
# bottleneck).
STREAM_PROCESSES = 2
REQ = "manticore/requests/data/"
PAGE = "manticore/waiting/data"


@contextmanager
def api_process(address: str) -> Iterator[tuple[str, psutil.Process]]:
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._api_instance", address, str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API instance did not become ready")
            time.sleep(0.1)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)


def consul_requests(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for kind in ("long-poll", "other"):
        match = re.search(rf'bench_api_consul_requests_total\{{kind="{kind}"\}} ([0-9.e+]+)', text)
        found[kind] = float(match.group(1)) if match else 0.0
    return found


def page(order: list[str]) -> bytes:
    return json.dumps({u: {"claimed": False, "queue": n} for n, u in enumerate(order)}).encode()


async def load_users(address: str, users: list[str]) -> None:
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as consul:
        for start in range(0, len(users), 64):
            ops = [
                {"KV": {"Verb": "set", "Key": REQ + u, "Value": "e30="}}
                for u in users[start : start + 64]
            ]
            (await consul.put("/v1/txn", json=ops)).raise_for_status()
        (await consul.put(f"/v1/kv/{PAGE}", content=page(users))).raise_for_status()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def reads(url: str, users: list[str], proc: psutil.Process) -> dict[str, float]:
    """``READS`` status reads over ``READ_CLIENTS`` connections, spread over the generator
    processes (``bench._get_client``), timed from the first one's start to the last one's end."""
    rng = random.Random(7)
    targets = [rng.choice(users) for _ in range(READS)]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for user in users[:50]:  # warm-up
            (await http.get(f"/api/v1/requests/{user}")).raise_for_status()
    before = consul_requests(url)
    cpu_before = cpu_seconds(proc)
    results: list[dict[str, Any]] = []

    async def generator(share: list[str]) -> None:
        command = [
            sys.executable,
            "-m",
            "bench._get_client",
            host,
            port,
            str(READ_CLIENTS // STREAM_PROCESSES),
        ]
        done = await anyio.run_process(command, input="\n".join(share).encode(), stderr=None)
        results.append(json.loads(done.stdout))

    async with anyio.create_task_group() as tg:
        for n in range(STREAM_PROCESSES):
            tg.start_soon(generator, targets[n::STREAM_PROCESSES])
    cpu = cpu_seconds(proc) - cpu_before
    after = consul_requests(url)
    latencies = [t for r in results for t in r["latencies"]]
    assert len(latencies) == READS, len(latencies)
    elapsed = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {
        "cpu_us": cpu / READS * 1e6,
        "rps": READS / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "consul_other": after["other"] - before["other"],
        "consul_long": after["long-poll"] - before["long-poll"],
    }


async def fanout(
    url: str, address: str, users: list[str], proc: psutil.Process, consul_port: int
) -> dict[str, float]:
    """Open the streams in ``STREAM_PROCESSES`` generator processes, then time ``ROUNDS`` changes.

    Each generator reports every event as ``<user> <position> <monotonic time read>``; an
    arrival counts for a round when its position is the one that round gave the user and it was
    read after the round's PUT was issued.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    seen: dict[str, list[tuple[str, float]]] = {}
    arrivals: dict[int, dict[str, float]] = {}
    expected: dict[int, tuple[float, dict[str, str]]] = {}
    rss_before = proc.memory_info().rss
    chosen = users[:STREAMS]
    shares = [chosen[n::STREAM_PROCESSES] for n in range(STREAM_PROCESSES)]

    def record(line: str) -> None:
        user, position, at = line.split()
        t = float(at)
        seen.setdefault(user, []).append((position, t))
        for number, (issued, wanted) in expected.items():
            if t >= issued and wanted.get(user) == position and user not in arrivals[number]:
                arrivals[number][user] = t

    clients: list[psutil.Process] = []

    async def generator(share: list[str]) -> None:
        command = [sys.executable, "-m", "bench._sse_client", host, port, *share]
        async with await anyio.open_process(command, stderr=None) as client:
            assert client.stdout is not None
            clients.append(psutil.Process(client.pid))
            buffered = b""
            async for data in client.stdout:
                buffered += data
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    record(line.decode())

    async with (
        httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as consul,
        anyio.create_task_group() as tg,
    ):
        for share in shares:
            tg.start_soon(generator, share)
        with anyio.fail_after(120):
            while len(seen) < STREAMS:
                await anyio.sleep(0.05)
        await anyio.sleep(1)
        rss_streams = proc.memory_info().rss
        consul_conns = sum(
            1
            for c in proc.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == consul_port and c.status == psutil.CONN_ESTABLISHED
        )
        latencies: list[float] = []
        order = list(users)
        cpu_before = cpu_seconds(proc)
        clients_before = sum(cpu_seconds(c) for c in clients)
        for number in range(ROUNDS):
            order.reverse()
            arrivals[number] = {}
            body = page(order)
            issued = time.monotonic()
            expected[number] = (issued, {u: str(n) for n, u in enumerate(order)})
            (await consul.put(f"/v1/kv/{PAGE}", content=body)).raise_for_status()
            with anyio.fail_after(60):
                while len(arrivals[number]) < STREAMS:
                    await anyio.sleep(0.01)
            latencies += [t - issued for t in arrivals[number].values()]
            await anyio.sleep(0.5)
        # Includes the idle half-seconds between rounds (keep-alives only: nothing is due).
        cpu_round = (cpu_seconds(proc) - cpu_before) / ROUNDS
        clients_round = (sum(cpu_seconds(c) for c in clients) - clients_before) / ROUNDS
        tg.cancel_scope.cancel()
    return {
        "cpu_round_ms": cpu_round * 1000,
        "clients_round_ms": clients_round * 1000,
        "p50": statistics.median(latencies) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "max": max(latencies) * 1000,
        "samples": len(latencies),
        "rss_before": rss_before / 2**20,
        "rss_streams": rss_streams / 2**20,
        "consul_conns": consul_conns,
    }


def run() -> str:
    users = [f"user-{n:04d}" for n in range(USERS)]
    with consul_process() as address:
        anyio.run(load_users, address, users)
        with api_process(address) as (url, proc):
            r = anyio.run(reads, url, users, proc)
            f = anyio.run(fanout, url, address, users, proc, int(address.rsplit(":", 1)[1]))
    fan_ok = "met" if f["p99"] <= 100 else "MISSED"
    zero = "met" if r["consul_other"] == 0 else "MISSED"
    notes = []
    if fan_ok == "MISSED":
        notes = [
            "",
            f"**Missed: fan-out p99.** The instance spends {f['cpu_round_ms']:.0f} ms of CPU to "
            f"deliver one change to {STREAMS} streams (about a third the kernel's socket "
            "writes, one per stream; the rest waking each stream's task and the ASGI server's "
            "send, and folding the change); on a core of its own the last stream would have its "
            "event well within the target, but with "
            f"the 1-min load at {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores the instance "
            "gets a fraction of one, and the wall time stretches accordingly. The streams of a "
            "deployment are spread over its instances by HAProxy; the per-instance cost scales "
            "with the streams each one holds.",
        ]
    return "\n".join(
        [
            "## Intake API",
            "",
            "| measure | result | target |",
            "|---|---|---|",
            f"| `GET /api/v1/requests/<id>`, one instance, {READ_CLIENTS} concurrent connections "
            f"| {r['rps']:.0f} requests/s (p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms) | |",
            f"| instance CPU time per `GET` (user + system) | {r['cpu_us']:.0f} µs "
            f"(~{1e6 / r['cpu_us']:.0f} requests/s per core it has to itself) | |",
            f"| Consul requests made by the instance during those {READS} reads "
            f"| {r['consul_other']:.0f} ({r['consul_long']:.0f} long-poll re-issues) "
            f"| 0 per read ({zero}) |",
            f"| KV change -> event at each of {STREAMS} open streams, p50 | {f['p50']:.1f} ms | |",
            f"| KV change -> event at each of {STREAMS} open streams, p99 "
            f"({f['samples']} arrivals over {ROUNDS} changes) | {f['p99']:.1f} ms "
            f"| <= 100 ms ({fan_ok}) |",
            f"| KV change -> event, slowest stream | {f['max']:.1f} ms | |",
            f"| instance CPU time to fan one change out to {STREAMS} streams "
            f"| {f['cpu_round_ms']:.0f} ms | |",
            f"| the stream processes' CPU time to read one change at {STREAMS} streams "
            f"(all {STREAM_PROCESSES}) | {f['clients_round_ms']:.0f} ms | |",
            f"| instance RSS with {USERS} users cached, no stream | {f['rss_before']:.0f} MiB | |",
            f"| instance RSS holding {STREAMS} open streams | {f['rss_streams']:.0f} MiB "
            f"(+{(f['rss_streams'] - f['rss_before']) * 1024 / STREAMS:.0f} KiB per stream) | |",
            f"| Consul connections of the instance holding {STREAMS} streams "
            f"| {f['consul_conns']} | bounded (5 watches + short pool of 6) |",
            "",
            f"Machine load during the run: 1-min load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores (other work shares them; the CPU-time rows do not depend "
            "on it, the throughput and latency rows do).",
            "",
            "Method: separate processes on loopback (embedded Consul, one API instance, the load "
            "generator and its stream processes), sharing the machine's cores. Reads: random "
            f"users among {USERS} waiting, {READ_CLIENTS} keep-alive connections with one request "
            f"in flight each, over {STREAM_PROCESSES} generator processes "
            "(`bench/_get_client.py`, plain asyncio sockets, each answer's status and JSON "
            "checked; with httpx the client was the bottleneck); the instance's Consul "
            "requests counted "
            "by an httpx hook in the instance and read from its /metrics before and after. "
            f"Fan-out: one stream per user, held by {STREAM_PROCESSES} generator processes "
            f"({STREAMS // STREAM_PROCESSES} each; `bench/_sse_client.py`: plain asyncio "
            "sockets on uvloop, chunked coding undone by hand, each event's JSON parsed, because "
            "with httpx the generator's own per-event cost outweighed the server's); each change "
            "reverses the waiting list (every position changes) with one PUT; latency is from "
            "just before the PUT is issued (main generator process) to the read of the bytes "
            "holding the event's data line (stream process), both on the host's "
            "CLOCK_MONOTONIC; an arrival counts for a change when it carries the position that "
            "change gave the user and was read after its PUT. The instance runs full garbage "
            "collections itself, every 30 s once no change has been handled for 0.25 s (so "
            "none fell inside a fan-out here; a change arriving during one waits for it: "
            "~100-150 ms with 1,000 streams).",
            *notes,
        ]
    )
