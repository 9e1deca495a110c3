"""The one small HTTP server of a controller process: ``/metrics``, ``/healthz``, ``/readyz``.

It is deliberately tiny (GET/HEAD only, one request per connection, bounded request size and
read time) and built on anyio sockets, so a controller process needs no web framework and the
server lives in the manager's task group like everything else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    """A health answer: ok, and a JSON-able detail shown to whoever asks."""

    ok: bool
    detail: dict[str, object]


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        liveness: Callable[[], Probe],
        readiness: Callable[[], Probe],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host = host
        self.port = port
        self._liveness = liveness
        self._readiness = readiness
        self._registry = registry

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, reuse_port=False
        )
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started(self.port)
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(READ_TIMEOUT):
                    head = await self._read_head(stream)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
                return
            status, ctype, body = self._route(head)
            method = head.split(b" ", 1)[0]
            response = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                await stream.send(response if method == b"HEAD" else response + body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    @staticmethod
    async def _read_head(stream: SocketStream) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive(4096)
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError("request head too large")
        return data.split(b"\r\n", 1)[0]

    def _route(self, request_line: bytes) -> tuple[str, str, bytes]:
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target, _ = parts
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path in (b"/healthz", b"/livez"):
            return self._probe(self._liveness)
        if path == b"/readyz":
            return self._probe(self._readiness)
        return "404 Not Found", "text/plain", b"not found\n"

    @staticmethod
    def _probe(check: Callable[[], Probe]) -> tuple[str, str, bytes]:
        try:
            probe = check()
        except Exception as exc:  # a probe that raises is a failing probe, not a dead server
            log.exception("health probe raised")
            probe = Probe(False, {"error": repr(exc)})
        body = json.dumps({"ok": probe.ok, **probe.detail}, sort_keys=True).encode() + b"\n"
        status = "200 OK" if probe.ok else "503 Service Unavailable"
        return status, "application/json", body
