"""The fake SDL core: one TCP port that says whose core it is, then echoes.

``python -m devstack.fakes.core --user <id> [--host IP] [--core-port N]``; without flags the
address is Nomad's ``NOMAD_IP_core`` / ``NOMAD_PORT_core``. Each connection first receives
``core <id>\\n``; everything it sends afterwards comes back unchanged, so a client (or HAProxy's
TCP route, or the fake HMI's broker) can prove it reached this user's core and no other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from devstack.fakes._wire import Handler, env_host, env_port, guarded, serve_until_signalled


def greeting(user: str) -> bytes:
    return f"core {user}\n".encode()


def handler(user: str) -> Handler:
    hello = greeting(user)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(hello)
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    return guarded(handle)


async def serve(user: str, host: str, port: int) -> None:
    server = await asyncio.start_server(handler(user), host, port, reuse_address=True)
    bound = server.sockets[0].getsockname()
    await serve_until_signalled([server], f"fake core of {user} on {bound[0]}:{bound[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.fakes.core", description=__doc__)
    parser.add_argument("--user", default=os.environ.get("MANTICORE_USER"))
    parser.add_argument("--host", default=None, help="default: $NOMAD_IP_core or 127.0.0.1")
    parser.add_argument("--core-port", type=int, default=None, help="default: $NOMAD_PORT_core")
    args = parser.parse_args(argv)
    if not args.user:
        parser.error("--user (or MANTICORE_USER) is required")
    asyncio.run(serve(args.user, env_host("core", args.host), env_port("core", args.core_port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
