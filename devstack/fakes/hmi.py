"""The fake HMI: the HMI page and the HMI<->core websocket broker of one user.

``python -m devstack.fakes.hmi --user <id> [--core IP:PORT] [--hmi-port N] [--broker-port N]``;
without flags the addresses come from Nomad's runtime variables (``NOMAD_IP_hmi``,
``NOMAD_PORT_hmi``, ``NOMAD_PORT_broker``, ``NOMAD_ADDR_core``), which is how the real HMI finds
its core inside one task group.

* HTTP, any path, on either port: ``200`` with ``hmi <id>`` (``broker <id>`` on the broker
  port) and a second line ``core: core <id>`` when this user's core answered, or
  ``core: unreachable (...)`` when it did not. The page answers even without core, so a health
  check says "the HMI is up" and the body says whether the pair works.
* A websocket on the HMI port is greeted with ``hmi <id>`` and then echoed.
* A websocket on the broker port is relayed to core's TCP port, byte for byte in both
  directions: its first message is core's greeting ``core <id>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from devstack.fakes._wire import (
    OP_TEXT,
    Handler,
    WebSocket,
    env_addr,
    env_host,
    env_optional_port,
    env_port,
    guarded,
    read_request,
    response,
    serve_until_signalled,
    websocket_accept,
)

CORE_TIMEOUT = 1.0


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected ip:port, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def probe_core(core: tuple[str, int] | None) -> str:
    """Core's greeting line, or why it could not be had."""
    if core is None:
        return "unreachable (no core address given)"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*core), CORE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return f"unreachable ({type(exc).__name__}: {exc})"
    try:
        line = await asyncio.wait_for(reader.readline(), CORE_TIMEOUT)
        return line.decode(errors="replace").strip() or "unreachable (no greeting)"
    except (OSError, TimeoutError) as exc:
        return f"unreachable ({type(exc).__name__})"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _echo(ws: WebSocket, user: str) -> None:
    await ws.send_text(f"hmi {user}")
    while (message := await ws.receive()) is not None:
        opcode, payload = message
        if opcode == OP_TEXT:
            await ws.send_text(payload.decode(errors="replace"))
        else:
            await ws.send_bytes(payload)


async def _relay(ws: WebSocket, core: tuple[str, int] | None) -> None:
    if core is None:
        return
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*core), CORE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        await ws.send_text(f"core: unreachable ({type(exc).__name__})")
        return

    async def core_to_ws() -> None:
        while data := await reader.read(65536):
            try:
                await ws.send_text(data.decode())
            except UnicodeDecodeError:
                await ws.send_bytes(data)

    pump = asyncio.create_task(core_to_ws())
    try:
        while (message := await ws.receive()) is not None:
            writer.write(message[1])
            await writer.drain()
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await pump
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def handler(role: str, user: str, core: tuple[str, int] | None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            if request.wants_websocket:
                writer.write(websocket_accept(request))
                await writer.drain()
                ws = WebSocket(reader, writer)
                await (_echo(ws, user) if role == "hmi" else _relay(ws, core))
                return
            status = await probe_core(core)
            body = f"{role} {user}\ncore: {status}\n".encode()
            keep = request.keep_alive
            writer.write(
                response(200, "OK", body, keep_alive=keep, head_only=request.method == "HEAD")
            )
            await writer.drain()
            if not keep:
                return

    return guarded(handle)


async def serve(
    user: str, host: str, hmi_port: int, broker_port: int | None, core: tuple[str, int] | None
) -> None:
    servers = [await asyncio.start_server(handler("hmi", user, core), host, hmi_port)]
    if broker_port is not None:
        servers.append(await asyncio.start_server(handler("broker", user, core), host, broker_port))
    where = ", ".join("{}:{}".format(*s.sockets[0].getsockname()[:2]) for s in servers)
    await serve_until_signalled(servers, f"fake hmi of {user} on {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.fakes.hmi", description=__doc__)
    parser.add_argument("--user", default=os.environ.get("MANTICORE_USER"))
    parser.add_argument("--host", default=None, help="default: $NOMAD_IP_hmi or 127.0.0.1")
    parser.add_argument("--hmi-port", type=int, default=None, help="default: $NOMAD_PORT_hmi")
    parser.add_argument(
        "--broker-port", type=int, default=None, help="default: $NOMAD_PORT_broker, if set"
    )
    parser.add_argument("--core", default=None, help="core's ip:port (default: $NOMAD_ADDR_core)")
    args = parser.parse_args(argv)
    if not args.user:
        parser.error("--user (or MANTICORE_USER) is required")
    broker = args.broker_port if args.broker_port is not None else env_optional_port("broker")
    core_text = args.core or env_addr("core")
    try:
        core = parse_address(core_text) if core_text else None
    except ValueError as exc:
        parser.error(str(exc))
    host = env_host("hmi", args.host)
    asyncio.run(serve(args.user, host, env_port("hmi", args.hmi_port), broker, core))
    return 0


if __name__ == "__main__":
    sys.exit(main())
