"""Small stand-ins for a user's HMI and core containers, and the clients that reach them.

An HMI answers every HTTP request with ``hmi:<user>`` and completes a websocket upgrade
(RFC 6455 handshake), then sends ``hmi:<user>`` as a text frame and echoes text frames back. A
core sends ``core:<user>\\n`` on connect, then echoes every line. So a response through HAProxy
names the container that produced it: a test asserts who it reached, not only that something
answered. Everything binds 127.0.0.1 on a port the kernel picks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()


def ws_frame(payload: bytes, *, mask: bool) -> bytes:
    """One FIN text frame (masked, as a client must send it)."""
    head = bytes([0x81])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_read_frame(stream: socket.socket | object) -> bytes:
    """Read one frame from a socket (or a file with ``read``); its unmasked payload."""
    read = _reader(stream)
    first, second = read(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read(8))
    key = read(4) if second & 0x80 else b""
    payload = read(length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    del first
    return payload


def _reader(stream: object):  # type: ignore[no-untyped-def]
    if isinstance(stream, socket.socket):

        def read_socket(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = stream.recv(n - len(data))
                if not chunk:
                    raise ConnectionError("closed mid-frame")
                data += chunk
            return data

        return read_socket

    def read_file(n: int) -> bytes:
        data = stream.read(n)  # type: ignore[attr-defined]
        if len(data) < n:
            raise ConnectionError("closed mid-frame")
        return bytes(data)

    return read_file


def _hmi_handler(user: str) -> type[BaseHTTPRequestHandler]:
    body = f"hmi:{user}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.headers.get("Upgrade", "").lower() == "websocket":
                self._websocket()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _websocket(self) -> None:
            key = self.headers.get("Sec-WebSocket-Key", "")
            self.send_response(101, "Switching Protocols")
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", ws_accept(key))
            self.end_headers()
            self.wfile.write(ws_frame(body, mask=False))
            self.wfile.flush()
            with contextlib.suppress(OSError, ConnectionError):
                while True:
                    payload = ws_read_frame(self.rfile)
                    self.wfile.write(ws_frame(payload, mask=False))
                    self.wfile.flush()
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _core_handler(user: str) -> type[socketserver.StreamRequestHandler]:
    hello = f"core:{user}\n".encode()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                self.wfile.write(hello)
                for line in self.rfile:
                    self.wfile.write(line)

    return Handler


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@dataclass
class UserContainers:
    """One user's fake HMI (HTTP + websocket) and core (TCP), serving until :meth:`stop`."""

    user: str
    hmi_port: int = 0
    core_port: int = 0
    _servers: list[socketserver.BaseServer] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def hmi(self) -> str:
        return f"127.0.0.1:{self.hmi_port}"

    @property
    def core(self) -> str:
        return f"127.0.0.1:{self.core_port}"

    def start(self) -> UserContainers:
        hmi = _HTTPServer(("127.0.0.1", 0), _hmi_handler(self.user))
        core = _TCPServer(("127.0.0.1", 0), _core_handler(self.user))
        self.hmi_port = hmi.server_address[1]
        self.core_port = core.server_address[1]
        for server in (hmi, core):
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._servers.clear()


@contextlib.contextmanager
def containers(*users: str) -> Iterator[dict[str, UserContainers]]:
    started = {user: UserContainers(user).start() for user in users}
    try:
        yield started
    finally:
        for each in started.values():
            each.stop()


# -- clients ----------------------------------------------------------------------------------


def http_get(port: int, host: str, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One HTTP/1.1 request to 127.0.0.1:``port`` with ``Host: host``; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode(errors="replace")


def websocket_hello(port: int, host: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """Open a websocket through HAProxy: (status, first message, echo of a message we send)."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(1)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head else 0
        if status != 101:
            return status, "", ""
        accept = next(
            (
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-accept:")
            ),
            "",
        )
        if accept != ws_accept(key):
            return status, "bad accept", ""
        first = ws_read_frame(conn).decode()
        conn.sendall(ws_frame(b"ping", mask=True))
        echo = ws_read_frame(conn).decode()
    return status, first, echo


def tcp_hello(port: int, timeout: float = 5.0) -> str:
    """Connect to 127.0.0.1:``port``: the first line the far end sends ('' if refused/closed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


class OpenTCP:
    """A TCP session held open through HAProxy: says hello, then echoes each line sent."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.hello = self.file.readline().decode().strip()

    def echo(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self.file.readline().decode().strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()
