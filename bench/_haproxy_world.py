"""The world around the HAProxy benchmark, each in its own process so nothing shares a GIL with
the controller under test:

- ``backends``: every user's HMI (HTTP/1.1 keep-alive, answers ``hmi <user>``) and core (TCP,
  greets ``core <user>`` then echoes), one port each on 127.0.0.1; prints the ports as JSON.
- ``load``: writes the users' ``haproxy/data/<id>`` at a steady rate, polls each new user's
  subdomain and TCP port through HAProxy until they answer with that user's name, and keeps
  clients busy throughout (HTTP requests repeated on keep-alive connections, TCP sessions held
  open and echoing), counting every dropped request or session; prints the results as JSON.

    python -m bench._haproxy_world backends USERS...
    python -m bench._haproxy_world load PLAN.json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

import httpx

POLL_EVERY = 0.05
ANSWER_TIMEOUT = 30.0


# -- backends -------------------------------------------------------------------------------


async def _hmi(user: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = f"hmi {user}".encode()
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    writer.close()


async def _core(user: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        writer.write(f"core {user}\n".encode())
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def backends(users: list[str]) -> None:
    ports: dict[str, list[int]] = {}
    servers = []
    for user in users:
        hmi = await asyncio.start_server(
            lambda r, w, u=user: _hmi(u, r, w), "127.0.0.1", 0, backlog=64
        )
        core = await asyncio.start_server(
            lambda r, w, u=user: _core(u, r, w), "127.0.0.1", 0, backlog=64
        )
        servers += [hmi, core]
        ports[user] = [hmi.sockets[0].getsockname()[1], core.sockets[0].getsockname()[1]]
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# -- clients --------------------------------------------------------------------------------


async def http_once(port: int, host: str, timeout: float = 2.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


async def tcp_greeting(port: int, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        return await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()


class Stats:
    def __init__(self) -> None:
        self.written: dict[str, float] = {}
        self.http_latency: dict[str, float] = {}
        self.tcp_latency: dict[str, float] = {}
        self.misroutes: list[str] = []
        self.hammer_ok = 0
        self.hammer_reconnects = 0
        self.hammer_drops: list[str] = []
        self.session_echoes = 0
        self.session_drops: list[str] = []


async def wait_routed(stats: Stats, user: dict[str, Any], main_port: int, written: float) -> None:
    deadline = written + ANSWER_TIMEOUT
    expected_http = f"hmi {user['id']}".encode()
    expected_tcp = f"core {user['id']}\n".encode()
    http_done = tcp_done = False
    while time.monotonic() < deadline and not (http_done and tcp_done):
        if not http_done:
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, body = await http_once(main_port, user["host"])
                if status == 200 and body == expected_http:
                    stats.http_latency[user["id"]] = time.monotonic() - written
                    http_done = True
                elif status == 200:
                    stats.misroutes.append(f"{user['host']} answered {body[:40]!r}")
        if not tcp_done:
            with contextlib.suppress(OSError, TimeoutError):
                line = await tcp_greeting(user["port"])
                if line == expected_tcp:
                    stats.tcp_latency[user["id"]] = time.monotonic() - written
                    tcp_done = True
                elif line:
                    stats.misroutes.append(f"port {user['port']} answered {line[:40]!r}")
        await asyncio.sleep(POLL_EVERY)


async def hammer(stats: Stats, main_port: int, host: str, stop: asyncio.Event) -> None:
    """Requests repeated on a keep-alive connection; a request sent and not answered is a drop.

    A response announcing ``Connection: close`` (HAProxy's old worker letting go after a
    reload) is followed by a new connection: that is a reconnect, not a drop.
    """
    expected = host.split(".")[0]
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", main_port)
        except OSError as exc:
            stats.hammer_drops.append(f"connect: {exc!r}")
            await asyncio.sleep(0.05)
            continue
        try:
            while not stop.is_set():
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await asyncio.wait_for(reader.readexactly(length), 5)
                if not head.startswith(b"HTTP/1.1 200") or not body.startswith(b"hmi "):
                    stats.hammer_drops.append(f"answer {head[:20]!r} {body[:20]!r} {expected}")
                else:
                    stats.hammer_ok += 1
                if b"connection: close" in head.lower():
                    stats.hammer_reconnects += 1
                    break
                await asyncio.sleep(0.02)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            stats.hammer_drops.append(f"in flight: {exc!r}")
        finally:
            writer.close()


async def session(stats: Stats, port: int, stop: asyncio.Event) -> None:
    """A TCP session held open for the whole run, echoing a line every 100 ms."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(reader.readline(), 5)
        except (OSError, TimeoutError) as exc:
            stats.session_drops.append(f"connect: {exc!r}")
            await asyncio.sleep(0.1)
            continue
        n = 0
        try:
            while not stop.is_set():
                n += 1
                writer.write(f"ping {n}\n".encode())
                line = await asyncio.wait_for(reader.readline(), 5)
                if line != f"ping {n}\n".encode():
                    raise ConnectionError(f"echo {line!r}")
                stats.session_echoes += 1
                await asyncio.sleep(0.1)
        except (OSError, TimeoutError, ConnectionError) as exc:
            stats.session_drops.append(f"session: {exc!r}")
        finally:
            writer.close()


async def load(plan: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    stop = asyncio.Event()
    main_port = plan["main_port"]
    steady = plan["steady"]
    busy = [asyncio.create_task(hammer(stats, main_port, steady["host"], stop)) for _ in range(4)]
    busy += [asyncio.create_task(session(stats, steady["port"], stop)) for _ in range(2)]
    users = plan["users"]
    spacing = plan["duration"] / max(1, len(users))
    pollers = []
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=f"http://{plan['consul']}", trust_env=False) as consul:
        for i, user in enumerate(users):
            delay = started + i * spacing - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            reply = await consul.put(f"/v1/kv/haproxy/data/{user['id']}", content=user["value"])
            reply.raise_for_status()
            written = time.monotonic()
            stats.written[user["id"]] = written
            pollers.append(asyncio.create_task(wait_routed(stats, user, main_port, written)))
        arrivals = time.monotonic() - started
        await asyncio.gather(*pollers)
    stop.set()
    await asyncio.gather(*busy, return_exceptions=True)
    return {
        "arrival_seconds": arrivals,
        "written": stats.written,
        "http_latency": stats.http_latency,
        "tcp_latency": stats.tcp_latency,
        "never": [u["id"] for u in users if u["id"] not in stats.http_latency],
        "misroutes": stats.misroutes[:20],
        "misroute_count": len(stats.misroutes),
        "hammer_ok": stats.hammer_ok,
        "hammer_reconnects": stats.hammer_reconnects,
        "hammer_drops": stats.hammer_drops,
        "session_echoes": stats.session_echoes,
        "session_drops": stats.session_drops,
    }


def main(argv: list[str]) -> int:
    if argv[0] == "backends":
        asyncio.run(backends(argv[1:]))
        return 0
    with open(argv[1]) as source:
        plan = json.load(source)
    print(json.dumps(asyncio.run(load(plan))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
