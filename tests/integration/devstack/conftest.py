"""Tiny loopback backends the HAProxy tests route real traffic to."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devstack.haproxy import haproxy_binary


@dataclass
class Backend:
    name: str
    port: int


def _http_backend(name: str) -> tuple[ThreadingHTTPServer, Backend]:
    body = name.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server, Backend(name, server.server_address[1])


@contextlib.contextmanager
def _serve(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def http_backend_a() -> Iterator[Backend]:
    server, backend = _http_backend("backend-a")
    with _serve(server):
        yield backend


@pytest.fixture
def http_backend_b() -> Iterator[Backend]:
    server, backend = _http_backend("backend-b")
    with _serve(server):
        yield backend


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(b"echo:" + line)


@pytest.fixture
def tcp_echo_backend() -> Iterator[Backend]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    with _serve(server):
        yield Backend("echo", server.server_address[1])


@pytest.fixture
def needs_haproxy() -> str:
    found = haproxy_binary()
    if found is None:
        pytest.skip("the haproxy binary is not installed (make haproxy)")
    return found
