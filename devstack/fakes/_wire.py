"""Just enough HTTP/1.1 and RFC 6455 websocket, on asyncio streams, for the fake core and HMI.

A real HTTP stack (aiohttp) costs a third of a second and 15 MB more per process; the fakes run
a hundred at a time, so they speak the small subset they need here: requests with keep-alive
(health checks and HAProxy reuse connections), ``HEAD``, bodies read and discarded, the
websocket handshake, and text/binary/ping/close frames with fragmentation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_FRAME_BYTES = 1024 * 1024

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    """The peer sent something this small server does not accept; the connection is closed."""


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def keep_alive(self) -> bool:
        connection = self.header("connection").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def wants_websocket(self) -> bool:
        return (
            self.header("upgrade").lower() == "websocket"
            and "upgrade" in self.header("connection").lower()
            and bool(self.header("sec-websocket-key"))
        )


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection, or None when the peer closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError("connection closed inside a request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(f"bad request line {lines[0][:80]!r}")
    request = Request(parts[0].upper(), parts[1], parts[2])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        request.headers[name.strip().lower()] = value.strip()
    length = request.header("content-length")
    if request.header("transfer-encoding"):
        raise ProtocolError("chunked request bodies are not supported")
    if length:
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            raise ProtocolError(f"bad content-length {length[:20]!r}")
        await reader.readexactly(int(length))
    return request


def response(
    status: int, reason: str, body: bytes, *, keep_alive: bool, head_only: bool = False
) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: " + ("keep-alive" if keep_alive else "close"),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + (b"" if head_only else body)


def websocket_accept(request: Request) -> bytes:
    """The 101 answer completing the handshake of ``request``."""
    key = request.header("sec-websocket-key")
    accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def encode_frame(opcode: int, payload: bytes, *, mask: bool = False) -> bytes:
    """One final frame; servers send unmasked frames, clients must mask theirs."""
    first = 0x80 | opcode
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + _unmask(payload, key)


def _unmask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """``(fin, opcode, payload)`` of the next frame, unmasked."""
    first, second = await reader.readexactly(2)
    fin, opcode = bool(first & 0x80), first & 0x0F
    masked, size = bool(second & 0x80), second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes is too large")
    key = await reader.readexactly(4) if masked else b""
    payload = await reader.readexactly(size)
    return fin, opcode, _unmask(payload, key) if masked else payload


class WebSocket:
    """The server side of one upgraded connection: whole messages in, frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False

    async def send_text(self, text: str) -> None:
        await self._send(OP_TEXT, text.encode())

    async def send_bytes(self, data: bytes) -> None:
        await self._send(OP_BINARY, data)

    async def _send(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            return
        self.writer.write(encode_frame(opcode, payload))
        await self.writer.drain()

    async def receive(self) -> tuple[int, bytes] | None:
        """The next data message ``(opcode, payload)``; None once the peer closed."""
        parts: list[bytes] = []
        message_op = OP_TEXT
        while True:
            try:
                fin, opcode, payload = await read_frame(self.reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.closed = True
                return None
            if opcode == OP_CLOSE:
                with contextlib.suppress(ConnectionError):
                    await self._send(OP_CLOSE, payload[:2])
                self.closed = True
                return None
            if opcode == OP_PING:
                await self._send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode in (OP_TEXT, OP_BINARY):
                message_op, parts = opcode, [payload]
            elif opcode == OP_CONT:
                parts.append(payload)
            else:
                raise ProtocolError(f"unknown opcode {opcode}")
            if sum(len(p) for p in parts) > MAX_FRAME_BYTES:
                raise ProtocolError("message too large")
            if fin:
                return message_op, b"".join(parts)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def guarded(handler: Handler) -> Handler:
    """Close the connection whatever happens; a bad peer never takes the server down."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ProtocolError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    return run


async def serve_until_signalled(servers: list[asyncio.Server], banner: str) -> None:
    """Print ``banner`` once listening, then serve until SIGTERM or SIGINT (exit code 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(banner, flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def env_port(label: str, given: int | None) -> int:
    if given is not None:
        return given
    raw = os.environ.get(f"NOMAD_PORT_{label}", "")
    if not raw.isdigit():
        sys.exit(f"no port for {label!r}: pass --{label}-port or set NOMAD_PORT_{label}")
    return int(raw)


def env_host(label: str, given: str | None) -> str:
    return given or os.environ.get(f"NOMAD_IP_{label}") or "127.0.0.1"


def env_optional_port(label: str) -> int | None:
    raw = os.environ.get(f"NOMAD_PORT_{label}", "")
    return int(raw) if raw.isdigit() else None


def env_addr(label: str) -> str | None:
    return os.environ.get(f"NOMAD_ADDR_{label}") or None
