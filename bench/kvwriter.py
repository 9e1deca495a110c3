"""A separate writer process for the dispatch benchmark: PUTs keys at a steady pace.

In production the writer of a watched key (the intake API, another controller) is another
process, so the benchmark's writer must not share the controller's event loop or CPU. Each line
printed is ``<key> <issued> <returned>`` in ``time.monotonic()`` seconds, which on Linux is one
system-wide clock (CLOCK_MONOTONIC), comparable with the controller process's timestamps.

    python -m bench.kvwriter HOST:PORT PREFIX COUNT SPACING_SECONDS
"""

from __future__ import annotations

import socket
import sys
import time


def main(argv: list[str]) -> int:
    address, prefix, count, spacing = argv[0], argv[1], int(argv[2]), float(argv[3])
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    out = []
    for i in range(count):
        key = f"{prefix}u{i}"
        body = b"x"
        request = (
            f"PUT /v1/kv/{key} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        issued = time.monotonic()
        sock.sendall(request)
        length = 0
        while True:
            line = reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        reader.read(length)
        returned = time.monotonic()
        out.append(f"u{i} {issued:.9f} {returned:.9f}")
        time.sleep(spacing)
    sock.close()
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
