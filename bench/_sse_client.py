"""A cheap load generator of event streams, for the fan-out benchmark.

``python -m bench._sse_client HOST PORT USER...`` opens one ``GET /api/v1/requests/<user>/events``
per user on plain asyncio sockets (uvloop when installed) and, for every ``status`` or ``ended``
event, writes one line to stdout: ``<user> <position|-> <monotonic seconds>``, the time taken
when the bytes holding the event's data line were read from the socket (before any parsing).

It exists because an HTTP client library costs more per received chunk than the server costs
to send it: with 1,000 streams in one httpx process the generator, not the API, would be what
is measured. This one does the least a client must: read the socket, undo the chunked
transfer coding, split events and read each one's JSON. ``time.monotonic()`` is the system-wide
``CLOCK_MONOTONIC`` on Linux, so its times compare with the parent process's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


class Stream(asyncio.Protocol):
    def __init__(self, user: str, host: str, out: Output) -> None:
        self.user = user
        self.host = host
        self.out = out
        self.raw = bytearray()
        self.events = bytearray()
        self.headers_done = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(  # type: ignore[attr-defined]
            f"GET /api/v1/requests/{self.user}/events HTTP/1.1\r\nHost: {self.host}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        raw = self.raw
        raw += data
        if not self.headers_done:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(raw[:end]).lower()
            if not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
                raise SystemExit(f"{self.user}: unexpected answer {head[:200]!r}")
            del raw[: end + 4]
            self.headers_done = True
        # Undo the chunked coding: <hex size>\r\n<data>\r\n ...
        while True:
            line = raw.find(b"\r\n")
            if line < 0:
                break
            size = int(raw[:line], 16)
            if len(raw) < line + 2 + size + 2:
                break
            self.events += raw[line + 2 : line + 2 + size]
            del raw[: line + 2 + size + 2]
            if size == 0:
                break
        events = self.events
        while True:
            end = events.find(b"\n\n")
            if end < 0:
                break
            block = bytes(events[:end])
            del events[: end + 2]
            self.event(block, now)

    def event(self, block: bytes, now: float) -> None:
        kind = b"message"
        data = None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                kind = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if data is None:
            return  # retry: hint, keep-alive comment
        if kind == b"status":
            position = json.loads(data).get("position")
            self.out.write(f"{self.user} {'-' if position is None else position} {now:.6f}\n")
        elif kind == b"ended":
            self.out.write(f"{self.user} ended {now:.6f}\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Output:
    """Lines to stdout, flushed once per loop pass (not once per event)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.loop = asyncio.get_running_loop()

    def write(self, line: str) -> None:
        if not self.lines:
            self.loop.call_soon(self.flush)
        self.lines.append(line)

    def flush(self) -> None:
        sys.stdout.write("".join(self.lines))
        sys.stdout.flush()
        self.lines.clear()


async def main(host: str, port: int, users: list[str]) -> None:
    loop = asyncio.get_running_loop()
    out = Output()
    streams = []
    for user in users:
        _, stream = await loop.create_connection(
            lambda u=user: Stream(u, f"{host}:{port}", out),  # type: ignore[misc]
            host,
            port,
        )
        streams.append(stream)
    # Until the parent closes our stdin (or every stream has ended).
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done = asyncio.ensure_future(asyncio.gather(*(s.closed for s in streams)))
    eof = asyncio.ensure_future(reader.read())
    await asyncio.wait([done, eof], return_when=asyncio.FIRST_COMPLETED)


if __name__ == "__main__":
    job = main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
    try:
        import uvloop
    except ImportError:
        asyncio.run(job)
    else:
        uvloop.run(job)
