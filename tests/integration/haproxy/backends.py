"""Each user's containers (the devstack's fake core and HMI) and the clients that reach them.

The fakes name their user in every answer (``hmi <id>`` on the HMI page and its websocket,
``broker <id>`` on the broker, ``core <id>`` as core's TCP greeting; the broker's websocket is
relayed to core), so a test asserts whose container it reached, not only that something
answered. The clients here speak raw HTTP/1.1, the RFC 6455 handshake and TCP through HAProxy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from devstack.process import free_ports

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


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed mid-frame")
        data += chunk
    return data


def ws_read_frame(sock: socket.socket) -> bytes:
    """Read one frame; its (unmasked) payload."""
    _, second = _recv_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _recv_exactly(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _recv_exactly(sock, 8))
    key = _recv_exactly(sock, 4) if second & 0x80 else b""
    payload = _recv_exactly(sock, length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return payload


@dataclass
class UserContainers:
    """One user's containers: the devstack's fake core and fake HMI (with its broker) as real
    processes on free loopback ports, serving until :meth:`stop`."""

    user: str
    core_port: int = 0
    hmi_port: int = 0
    broker_port: int = 0
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def hmi(self) -> str:
        return f"127.0.0.1:{self.hmi_port}"

    @property
    def broker(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def core(self) -> str:
        return f"127.0.0.1:{self.core_port}"

    def start(self) -> UserContainers:
        self.core_port, self.hmi_port, self.broker_port = free_ports(3)
        self._spawn("devstack.fakes.core", "--core-port", str(self.core_port))
        self._spawn(
            "devstack.fakes.hmi",
            "--hmi-port",
            str(self.hmi_port),
            "--broker-port",
            str(self.broker_port),
            "--core",
            self.core,
        )
        return self

    def _spawn(self, module: str, *args: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--user", self.user, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        banner = proc.stdout.readline().decode()
        if not banner.startswith("fake "):
            self.stop()
            raise RuntimeError(f"{module} for {self.user} did not start: {banner!r}")

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()


@contextlib.contextmanager
def containers(*users: str) -> Iterator[dict[str, UserContainers]]:
    started: dict[str, UserContainers] = {}
    try:
        for user in users:
            started[user] = UserContainers(user).start()
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


class OpenWebSocket:
    """A websocket held open through HAProxy: its greeting, then an echo per message sent."""

    def __init__(self, port: int, host: str, timeout: float = 5.0) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.accepted = any(
            line.lower().startswith(b"sec-websocket-accept:")
            and line.split(b":", 1)[1].strip().decode() == ws_accept(key)
            for line in head.split(b"\r\n")
        )
        self.hello = ws_read_frame(self.sock).decode() if self.status == 101 else ""

    def echo(self, text: str) -> str:
        self.sock.sendall(ws_frame(text.encode(), mask=True))
        return ws_read_frame(self.sock).decode()

    def close(self) -> None:
        self.sock.close()


def websocket_hello(port: int, host: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """Open a websocket through HAProxy: (status, first message, echo of "ping")."""
    ws = OpenWebSocket(port, host, timeout)
    try:
        if ws.status != 101:
            return ws.status, "", ""
        if not ws.accepted:
            return ws.status, "bad accept", ""
        return ws.status, ws.hello, ws.echo("ping")
    finally:
        ws.close()


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
