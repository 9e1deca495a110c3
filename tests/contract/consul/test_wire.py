"""HTTP/1.1 on the wire: pipelined keep-alive reads, HTTP/1.0 and Connection: close.

Reads are written to the socket in one piece on the hot path; these check that the bytes a raw
client sees are well-formed HTTP whatever the connection's mode.
"""

from __future__ import annotations

import json
import socket

import httpx


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a full response head"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the full body"
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def _connect(consul_addr: str) -> socket.socket:
    host, port = consul_addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_pipelined_reads_on_one_connection_come_back_in_order(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    for name in ("a", "b"):
        consul_http.put(f"/v1/kv/{kv_prefix}{name}", content=name.encode()).raise_for_status()
    with _connect(consul_addr) as sock:
        request = "GET /v1/kv/{} HTTP/1.1\r\nHost: consul\r\n\r\n"
        sock.sendall(
            (
                request.format(kv_prefix + "a")
                + request.format(kv_prefix + "missing")
                + request.format(kv_prefix + "b")
            ).encode()
        )
        buffer = b""
        seen = []
        for _ in range(3):
            status, headers, body, buffer = _read_response(sock, buffer)
            assert int(headers["x-consul-index"]) >= 1
            seen.append((status, json.loads(body)[0]["Key"] if body else None))
    assert seen == [(200, kv_prefix + "a"), (404, None), (200, kv_prefix + "b")]


def test_http10_and_connection_close_get_complete_responses(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    consul_http.put(f"/v1/kv/{kv_prefix}k", content=b"v").raise_for_status()
    for request in (
        f"GET /v1/kv/{kv_prefix}k HTTP/1.0\r\n\r\n",
        f"GET /v1/kv/{kv_prefix}k HTTP/1.1\r\nHost: consul\r\nConnection: close\r\n\r\n",
    ):
        with _connect(consul_addr) as sock:
            sock.sendall(request.encode())
            status, headers, body, _ = _read_response(sock, b"")
            assert status == 200
            assert headers["content-type"].startswith("application/json")
            assert json.loads(body)[0]["Key"] == kv_prefix + "k"
            # the server closes the connection after answering
            assert sock.recv(1) == b""


def test_large_bodies_are_gzipped_once_whatever_the_connection_mode(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    """A random value does not compress, so its gzip is still over the 1400-byte threshold:
    it must be compressed once, not once more on its way out."""
    import base64
    import gzip
    import os
    import uuid

    value = os.urandom(4000)
    consul_http.put(f"/v1/kv/{kv_prefix}big", content=value).raise_for_status()
    name = f"gz-{uuid.uuid4().hex[:8]}"
    consul_http.put(
        "/v1/agent/service/register",
        json={
            "Name": name,
            "Meta": {f"blob{i}": value.hex()[i * 500 : (i + 1) * 500] for i in range(8)},
        },
    ).raise_for_status()
    try:
        for path in (f"/v1/kv/{kv_prefix}big", f"/v1/health/service/{name}"):
            for mode in ("HTTP/1.0\r\n", "HTTP/1.1\r\nHost: consul\r\nConnection: close\r\n"):
                with _connect(consul_addr) as sock:
                    sock.sendall(f"GET {path} {mode}Accept-Encoding: gzip\r\n\r\n".encode())
                    status, headers, body, _ = _read_response(sock, b"")
                assert status == 200
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                decoded = json.loads(body)
                if path.startswith("/v1/kv/"):
                    assert base64.b64decode(decoded[0]["Value"]) == value
                else:
                    assert decoded[0]["Service"]["Service"] == name
    finally:
        consul_http.put(f"/v1/agent/service/deregister/{name}")
