"""Embedded Consul benchmark: KV write throughput and blocking-query wake-up latency.

The server runs in its own process (``python -m devstack.consul --port 0``) so the load generator
does not share its GIL; the generator speaks HTTP/1.1 over raw asyncio streams with keep-alive
connections, so what is measured is the server, not a client library. Two fan-outs are measured:
1,000 parked queries (the everyday case) and 10,000 (where real Consul is reported to stall),
with the emulator's memory and file descriptors read from ``/proc`` while the 10,000 are parked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

WRITE_TARGET = 3000.0
WAKE_TARGET_MS = 50.0
WRITERS = 32
WRITE_SECONDS = 4.0
WATCHERS = 1000
ROUNDS = 5
BIG_WATCHERS = 10_000
BIG_ROUNDS = 3
BIG_TARGET_MS = 250.0


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
        status = int(head[9:12])
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower().decode()] = value.strip().decode()
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


class Watcher(asyncio.Protocol):
    """A parked blocking query as a bare protocol: it only timestamps a complete response.

    A StreamReader task per connection would cost the generator more than the server spends,
    so the arrival time is taken in ``data_received`` itself.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.done: asyncio.Future[float] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write/close.
        self.transport = transport  # type: ignore[assignment]

    def ask(self, path: str) -> asyncio.Future[float]:
        assert self.transport is not None
        self.buffer = b""
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        return self.done

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.done is None or self.done.done():
            return
        at = self.buffer.find(b"Content-Length: ")
        length = int(self.buffer[at + 16 : self.buffer.index(b"\r\n", at)]) if at >= 0 else 0
        if len(self.buffer) >= end + 4 + length:
            if self.buffer[9:12] != b"200":
                self.done.set_exception(RuntimeError(self.buffer[:12].decode()))
            else:
                self.done.set_result(time.perf_counter())


def _raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the server started after it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _connect_all(host: str, port: int, n: int) -> list[Watcher]:
    loop = asyncio.get_running_loop()
    watchers: list[Watcher] = []
    batch = 500
    for start in range(0, n, batch):
        made = await asyncio.gather(
            *(loop.create_connection(Watcher, host, port) for _ in range(min(batch, n - start)))
        )
        watchers.extend(proto for _, proto in made)
    return watchers


async def _wakeups(
    host: str, port: int, n: int, rounds: int, pid: int | None = None
) -> tuple[list[float], dict[str, float]]:
    control = await Conn.open(host, port)
    await control.request("PUT", "/v1/kv/bench/watch/seed", b"0")
    memory: dict[str, float] = {}
    if pid is not None:
        memory["rss_before"] = _rss_mib(pid)
        memory["fds_before"] = _fds(pid)
    watchers = await _connect_all(host, port, n)
    delays: list[float] = []
    for round_no in range(rounds):
        _, headers, _ = await control.request("GET", "/v1/kv/bench/watch/?recurse")
        index = headers["x-consul-index"]
        path = f"/v1/kv/bench/watch/?recurse&index={index}&wait=60s"
        waits = [w.ask(path) for w in watchers]
        # Wait until every query is parked on the server before writing.
        deadline = time.perf_counter() + 60
        while True:
            _, _, body = await control.request("GET", "/_devstack/stats")
            if json.loads(body)["BlockingQueries"] >= n:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError("watchers did not park in time")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2 if n > WATCHERS else 0.05)
        if pid is not None and round_no == 0:
            memory["rss_parked"] = _rss_mib(pid)
            memory["fds_parked"] = _fds(pid)
        written_at = time.perf_counter()
        # A new key each round and phase: an identical write is a no-op that wakes nobody.
        await control.request("PUT", f"/v1/kv/bench/watch/k{n}-{round_no}", b"1")
        done_at = await asyncio.wait_for(asyncio.gather(*waits), 60)
        delays.extend((t - written_at) * 1000 for t in done_at)
    for w in watchers:
        if w.transport is not None:
            w.transport.close()
    control.close()
    return delays, memory


def _run_loop(coro: Any) -> Any:
    """The generator on uvloop when installed (its per-connection cost is the smaller one)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> str:
    load_before = os.getloadavg()[0]
    nofile = _raise_nofile()
    proc, host, port = _start_server()
    try:
        rate, writes = asyncio.run(_writes(host, port))
        delays, _ = asyncio.run(_wakeups(host, port, WATCHERS, ROUNDS))
        big, memory = _run_loop(_wakeups(host, port, BIG_WATCHERS, BIG_ROUNDS, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
    p50, p99 = statistics.median(delays), _p(delays, 0.99)
    b50, b99, bmax = statistics.median(big), _p(big, 0.99), max(big)
    ok_w = "yes" if rate >= WRITE_TARGET else "no"
    ok_b = "yes" if p99 <= WAKE_TARGET_MS else "no"
    ok_big = "yes" if b99 <= BIG_TARGET_MS else "no"
    per_waiter_kib = (
        (memory["rss_parked"] - memory["rss_before"]) * 1024 / BIG_WATCHERS if memory else 0.0
    )
    return (
        "## Embedded Consul\n\n"
        "| figure | measured | target | met |\n"
        "|---|---|---|---|\n"
        f"| KV PUT throughput ({WRITERS} keep-alive connections, {writes} writes) "
        f"| {rate:,.0f} writes/s | >= {WRITE_TARGET:,.0f} writes/s | {ok_w} |\n"
        f"| write -> return of {WATCHERS} blocking queries on the prefix, p50 "
        f"| {p50:.1f} ms | | |\n"
        f"| write -> return of {WATCHERS} blocking queries on the prefix, p99 "
        f"({ROUNDS} rounds) | {p99:.1f} ms | <= {WAKE_TARGET_MS:.0f} ms | {ok_b} |\n"
        f"| write -> return of {BIG_WATCHERS:,} blocking queries on the prefix, p50 "
        f"| {b50:.1f} ms | | |\n"
        f"| write -> return of {BIG_WATCHERS:,} blocking queries on the prefix, p99 "
        f"({BIG_ROUNDS} rounds) | {b99:.1f} ms | <= {BIG_TARGET_MS:.0f} ms | {ok_big} |\n"
        f"| write -> return of {BIG_WATCHERS:,} blocking queries, slowest | {bmax:.1f} ms | | |\n"
        f"| emulator RSS, idle -> {BIG_WATCHERS:,} parked "
        f"| {memory['rss_before']:.1f} -> {memory['rss_parked']:.1f} MiB "
        f"({per_waiter_kib:.1f} KiB per parked query) | | |\n"
        f"| emulator open fds, idle -> {BIG_WATCHERS:,} parked "
        f"| {memory['fds_before']:.0f} -> {memory['fds_parked']:.0f} | | |\n\n"
        "Method: the emulator runs as `python -m devstack.consul --port 0` in a separate process; "
        "the load generator uses raw asyncio streams over loopback keep-alive connections. "
        f"Throughput is {WRITERS} connections issuing `PUT /v1/kv/...` back to back for "
        f"{WRITE_SECONDS:.0f} s. Wake-up latency: {WATCHERS} (then {BIG_WATCHERS:,}) "
        "connections park `GET /v1/kv/bench/watch/?recurse&index=N&wait=60s` (confirmed through "
        "`/_devstack/stats`), one PUT under the prefix is sent, and each delay runs from just "
        "before that PUT is issued to the moment its response is fully read by the client; "
        f"{ROUNDS} (then {BIG_ROUNDS}) rounds on the same connections, every delay of every "
        "round in the percentiles. The 10,000-query generator runs on "
        f"{_loop_name()} with RLIMIT_NOFILE raised to {nofile} (inherited by the emulator); RSS "
        "(`VmRSS`) and open fds are read from the emulator's `/proc/<pid>` before the "
        "connections open and with all of them parked. The machine is shared: the 1-minute "
        f"load average was {load_before:.2f} when the run started, and other processes on the "
        "same cores widen the tail."
    )


if __name__ == "__main__":
    print(run())
