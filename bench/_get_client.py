"""A cheap load generator of status reads, for the ``GET /api/v1/requests/<id>`` benchmark.

``python -m bench._get_client HOST PORT CONNECTIONS`` reads user ids (one a line) from stdin,
then reads each one's status over ``CONNECTIONS`` keep-alive connections (one request in
flight on each), checking every answer is a ``200`` whose JSON names the user. It prints one
JSON object: ``started`` and ``ended`` (``time.monotonic()``) and every request's latency.

Like ``bench._sse_client``, it exists so that the client's own cost per request (an HTTP
library's is several times the server's) does not set the measured rate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator


class Reader(asyncio.Protocol):
    def __init__(self, host: str, targets: Iterator[str], latencies: list[float]) -> None:
        self.host = host
        self.targets = targets
        self.latencies = latencies
        self.buffer = bytearray()
        self.user = ""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.next()

    def next(self) -> None:
        user = next(self.targets, None)
        if user is None:
            assert self.transport is not None
            self.transport.close()
            return
        self.user = user
        self.sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(
            f"GET /api/v1/requests/{user} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        marker = head.find(b"content-length:")
        if marker < 0:
            raise SystemExit(f"no content-length in {head[:200]!r}")
        stop = head.find(b"\r\n", marker)
        length = int(head[marker + 15 : stop if stop >= 0 else len(head)])
        if len(buffer) < end + 4 + length:
            return
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        self.latencies.append(time.perf_counter() - self.sent)
        if not head.startswith(b"http/1.1 200") or json.loads(body).get("id") != self.user:
            raise SystemExit(f"{self.user}: unexpected answer {head[:200]!r} {body[:200]!r}")
        self.next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def main(host: str, port: int, connections: int, users: list[str]) -> None:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    targets = iter(users)
    started = time.monotonic()
    readers = []
    for _ in range(connections):
        _, reader = await loop.create_connection(
            lambda: Reader(f"{host}:{port}", targets, latencies), host, port
        )
        readers.append(reader)
    await asyncio.gather(*(r.done for r in readers))
    ended = time.monotonic()
    json.dump({"started": started, "ended": ended, "latencies": latencies}, sys.stdout)


if __name__ == "__main__":
    job = main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.stdin.read().split())
    try:
        import uvloop
    except ImportError:
        asyncio.run(job)
    else:
        uvloop.run(job)
