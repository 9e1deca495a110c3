"""Running an aiohttp application of the devstack: in the foreground, or on a background thread.

The embedded Consul and Nomad are aiohttp applications. A test (sync or async, any event loop)
starts one with :class:`ServerThread`, which runs it on a private event loop in a daemon thread
and hands back its address, so clients talk to it over a real loopback socket exactly as they
would to a real agent. The CLI runs the same application in the foreground with
:func:`run_foreground`, which prints one ready line and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

AppFactory = Callable[[], Awaitable[web.Application]]


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    site = web.SockSite(runner, sock)
    await site.start()
    return runner, sock.getsockname()[1]


class ServerThread:
    """An aiohttp application served on 127.0.0.1 from a daemon thread with its own loop."""

    def __init__(self, factory: AppFactory, host: str = "127.0.0.1", port: int = 0) -> None:
        self._factory = factory
        self.host = host
        self.port = port
        self.app: web.Application | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        """``host:port``, the form of ``CONSUL_HTTP_ADDR``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread = threading.Thread(target=self._main, name="devstack-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("devstack server did not start in time")
        if self._error is not None:
            raise RuntimeError("devstack server failed to start") from self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            self.app = loop.run_until_complete(self._factory())
            started = loop.run_until_complete(_start(self.app, self.host, self.port))
            self._runner, self.port = started
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the server's loop (thread-safe access to its state); return its result."""
        assert self.loop is not None

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about 15% less per-response overhead), else asyncio's own.

    ``DEVSTACK_EVENT_LOOP=asyncio`` forces the standard loop.
    """
    if os.environ.get("DEVSTACK_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: every parked long poll holds a socket."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def run_foreground(factory: AppFactory, *, host: str, port: int, name: str) -> int:
    """Serve in the foreground until SIGTERM/SIGINT; print one ready line once listening."""
    raise_fd_limit()

    async def main() -> None:
        app = await factory()
        runner, bound = await _start(app, host, port)
        # A server holding tens of thousands of long-lived entries pays tens of milliseconds for
        # each full collection, and the allocation burst of one write waking a thousand parked
        # queries is what triggers them. Collect far less often, and never scan start-up objects.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"{name} ready on http://{host}:{bound}", flush=True)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        print(f"{name} stopped", flush=True)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    sys.stdout.flush()
    return 0
