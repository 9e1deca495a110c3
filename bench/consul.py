"""Embedded Consul benchmark: KV write throughput and blocking-query wake-up latency.

The server runs in its own process (``python -m devstack.consul --port 0``) so the load generator
does not share its GIL; the generator speaks HTTP/1.1 over raw asyncio streams with keep-alive
connections, so what is measured is the server, not a client library.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

WRITE_TARGET = 3000.0
WAKE_TARGET_MS = 50.0
WRITERS = 32
WRITE_SECONDS = 4.0
WATCHERS = 1000
ROUNDS = 5


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, method: str, path: str, body: bytes = b"") -> None:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)

    async def receive(self) -> tuple[int, dict[str, str], bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(length) if length else b""
        return status, headers, body

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
        self.send(method, path, body)
        return await self.receive()

    def close(self) -> None:
        self.writer.close()


def _start_server() -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.consul", "--port", "0", "--node", "bench"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://([\d.]+):(\d+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, match.group(1), int(match.group(2))


async def _writes(host: str, port: int) -> tuple[float, int]:
    conns = [await Conn.open(host, port) for _ in range(WRITERS)]
    count = 0
    stop_at = time.perf_counter() + WRITE_SECONDS
    payload = b"x" * 64

    async def writer(i: int, conn: Conn) -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < stop_at:
            status, _, _ = await conn.request("PUT", f"/v1/kv/bench/w/{i}/{n % 100}", payload)
            assert status == 200
            n += 1
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(i, c) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return count / elapsed, count


async def _wakeups(host: str, port: int) -> list[float]:
    control = await Conn.open(host, port)
    await control.request("PUT", "/v1/kv/bench/watch/seed", b"0")
    watchers = [await Conn.open(host, port) for _ in range(WATCHERS)]
    delays: list[float] = []
    for round_no in range(ROUNDS):
        _, headers, _ = await control.request("GET", "/v1/kv/bench/watch/?recurse")
        index = headers["x-consul-index"]
        for w in watchers:
            w.send("GET", f"/v1/kv/bench/watch/?recurse&index={index}&wait=60s")
        # Wait until every query is parked on the server before writing.
        deadline = time.perf_counter() + 20
        while True:
            _, _, body = await control.request("GET", "/_devstack/stats")
            import json

            if json.loads(body)["BlockingQueries"] >= WATCHERS:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError("watchers did not park in time")
            await asyncio.sleep(0.05)
        done_at: list[float] = []

        async def wait_one(w: Conn) -> None:
            status, _, _ = await w.receive()
            assert status == 200
            done_at.append(time.perf_counter())

        waits = [asyncio.create_task(wait_one(w)) for w in watchers]
        await asyncio.sleep(0.05)
        written_at = time.perf_counter()
        await control.request("PUT", f"/v1/kv/bench/watch/k{round_no}", b"1")
        await asyncio.wait_for(asyncio.gather(*waits), 30)
        delays.extend((t - written_at) * 1000 for t in done_at)
    for w in watchers:
        w.close()
    control.close()
    return delays


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> str:
    proc, host, port = _start_server()
    try:
        rate, writes = asyncio.run(_writes(host, port))
        delays = asyncio.run(_wakeups(host, port))
    finally:
        proc.terminate()
        proc.wait(10)
    p50, p99 = statistics.median(delays), _p(delays, 0.99)
    ok_w = "yes" if rate >= WRITE_TARGET else "no"
    ok_b = "yes" if p99 <= WAKE_TARGET_MS else "no"
    return (
        "## Embedded Consul\n\n"
        "| figure | measured | target | met |\n"
        "|---|---|---|---|\n"
        f"| KV PUT throughput ({WRITERS} keep-alive connections, {writes} writes) "
        f"| {rate:,.0f} writes/s | >= {WRITE_TARGET:,.0f} writes/s | {ok_w} |\n"
        f"| write -> return of {WATCHERS} blocking queries on the prefix, p50 "
        f"| {p50:.1f} ms | | |\n"
        f"| write -> return of {WATCHERS} blocking queries on the prefix, p99 "
        f"({ROUNDS} rounds) | {p99:.1f} ms | <= {WAKE_TARGET_MS:.0f} ms | {ok_b} |\n\n"
        "Method: the emulator runs as `python -m devstack.consul --port 0` in a separate process; "
        "the load generator uses raw asyncio streams over loopback keep-alive connections. "
        f"Throughput is {WRITERS} connections issuing `PUT /v1/kv/...` back to back for "
        f"{WRITE_SECONDS:.0f} s. Wake-up latency: {WATCHERS} connections park "
        "`GET /v1/kv/bench/watch/?recurse&index=N` (confirmed through `/_devstack/stats`), one "
        "PUT under the prefix is sent, and each delay runs from just before that PUT to the "
        "moment its response is fully read by the client."
    )


if __name__ == "__main__":
    print(run())
