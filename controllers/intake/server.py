"""``manticore-api``: one intake API instance, from the environment, until SIGTERM.

Start-up: bind the port (``HTTP_PORT``, 0 picks a free one), start the watches, and once their
caches are warm register in Consul as ``MANTICORE_WEB_APP_SERVICE`` with an HTTP check on
``/healthz``. Shutdown (SIGTERM/SIGINT): deregister first, so HAProxy stops sending users here,
then end the open event streams (browsers reconnect to another instance), finish the requests
in flight, and stop the watches.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

import anyio
import uvicorn
from anyio.abc import TaskStatus

from controllers.intake import metrics
from controllers.intake.app import Clock, Frontdoor, create_app, utcnow
from controllers.intake.cache import ClusterCache
from controllers.intake.registration import Registration
from controllers.settings import Settings
from reconciler import logging as rlogging
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import ClientError, ConfigError

log = logging.getLogger("controllers.intake")

SHUTDOWN_GRACE = 5.0
FULL_COLLECT_EVERY = 30.0
QUIET_BEFORE_COLLECT = 0.25


class _Server(uvicorn.Server):
    """uvicorn, with our order of shutdown and without re-raising the signal it caught."""

    def __init__(self, config: uvicorn.Config, running: Running) -> None:
        super().__init__(config)
        self._running = running

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if (
            not self._running.install_signals
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return

        def handle(sig: int, frame: FrameType | None) -> None:
            self.handle_exit(sig, frame)

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._running.leave()
        await super().shutdown(sockets)


@dataclass
class Running:
    """A started instance: its port and parts, and how to stop it."""

    settings: Settings
    consul: ConsulClient
    front: Frontdoor
    port: int = 0
    install_signals: bool = True
    server: _Server | None = None
    _left: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True

    async def leave(self) -> None:
        """Deregister, then end every stream; runs once, shielded, bounded."""
        if self._left:
            return
        self._left = True
        registration = self.front.registration
        with anyio.move_on_after(SHUTDOWN_GRACE, shield=True):
            if registration is not None and self.front.registered:
                try:
                    await registration.deregister(self.consul)
                except ClientError as exc:
                    log.warning("could not deregister %s: %s", registration.service_id, exc)
                self.front.registered = False
        self.front.cache.close_streams()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def registration_for(settings: Settings, port: int) -> Registration:
    api = settings.api
    address = api.advertise_address or (
        "127.0.0.1" if api.bind_address in ("0.0.0.0", "::") else api.bind_address
    )
    service = settings.haproxy.web_app_service
    service_id = api.service_id or f"{service}-{address.replace(':', '-')}-{port}"
    return Registration(
        service=service,
        service_id=service_id,
        address=address,
        port=port,
        check_interval=api.check_interval,
        deregister_after=api.deregister_after,
    )


async def serve(
    settings: Settings,
    clients: ClientsConfig,
    *,
    install_signals: bool = True,
    clock: Clock = utcnow,
    wait: float = 300.0,
    stream_max_seconds: float = 3600.0,
    consul_client: ConsulClient | None = None,
    task_status: TaskStatus[Running] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one instance until it is told to stop (a signal, or :meth:`Running.stop`).

    ``consul_client``: a client to use instead of one built from ``clients`` (benchmarks count
    its requests); it is closed on the way out like our own.
    """
    api = settings.api
    sock = bind(api.bind_address, api.http_port)
    port = sock.getsockname()[1]
    async with consul_client or ConsulClient(clients.consul) as consul:
        cache = ClusterCache(consul, settings, wait=wait)
        front = Frontdoor(
            settings, cache, consul, clock=clock, stream_max_seconds=stream_max_seconds
        )
        running = Running(settings, consul, front, port=port, install_signals=install_signals)
        config = uvicorn.Config(
            create_app(front),
            log_config=None,
            access_log=False,
            lifespan="off",
            http="auto",  # httptools when installed (it is a dependency), else h11
            ws="none",
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE),
            server_header=False,
        )
        server = running.server = _Server(config, running)
        async with anyio.create_task_group() as tg:
            await tg.start(cache.run)
            tg.start_soon(_collect_when_quiet, cache)
            if api.register_service:
                front.registration = registration_for(settings, port)
                tg.start_soon(_register_when_ready, running)
            tg.start_soon(_announce, running, task_status)
            try:
                await server.serve(sockets=[sock])
            finally:
                await running.leave()
                tg.cancel_scope.cancel()
    metrics.REGISTERED.set(0)


async def _collect_when_quiet(cache: ClusterCache) -> None:
    """Full garbage collections on our schedule, between fan-outs, instead of in the middle.

    A full collection walks every object the process holds (~250,000 with 1,000 streams open:
    over 100 ms here) and the loop writes nothing meanwhile; left to the interpreter it comes
    whenever allocations add up, which is precisely while a change is fanned out. So the
    automatic full collection is off while an instance runs, the young generations are
    collected as usual, and a full one runs every ``FULL_COLLECT_EVERY`` seconds once no change
    has been handled for ``QUIET_BEFORE_COLLECT``, or regardless after another
    ``FULL_COLLECT_EVERY`` without such a moment: no cycle is kept longer than a minute.
    """
    with _manual_full_collections():
        await cache.wait_ready()
        while True:
            gc.collect()
            await anyio.sleep(FULL_COLLECT_EVERY)
            with anyio.move_on_after(FULL_COLLECT_EVERY):
                while cache.quiet_for() < QUIET_BEFORE_COLLECT:
                    await anyio.sleep(QUIET_BEFORE_COLLECT)


_automatic: list[tuple[int, int, int]] = []  # the interpreter's thresholds, once per instance


@contextlib.contextmanager
def _manual_full_collections() -> Iterator[None]:
    """Automatic full collections off while any instance of this process runs."""
    threshold = gc.get_threshold()
    if _automatic:
        threshold = _automatic[0]
    _automatic.append(threshold)
    gc.set_threshold(threshold[0], threshold[1], 1_000_000_000)
    try:
        yield
    finally:
        _automatic.pop()
        if not _automatic:
            gc.set_threshold(*threshold)


async def _announce(running: Running, task_status: TaskStatus[Running]) -> None:
    server = running.server
    assert server is not None
    while not server.started:
        await anyio.sleep(0.01)
    log.info("manticore-api listening on %s:%d", running.settings.api.bind_address, running.port)
    task_status.started(running)


async def _register_when_ready(running: Running) -> None:
    front = running.front
    registration = front.registration
    assert registration is not None
    await front.cache.wait_ready()
    delay = 0.5
    while not running._left:
        try:
            await registration.register(running.consul)
            front.registered = True
            return
        except ClientError as exc:
            log.warning("could not register %s (retrying): %s", registration.service_id, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="manticore-api",
        description="The Manticore intake API: configured from the environment (HTTP_PORT, "
        "JWT_SECRET, CONSUL_HTTP_ADDR, ...; see the README).",
    )
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        clients = ClientsConfig.from_env()
    except ConfigError as exc:
        print(f"manticore-api: {exc}", file=sys.stderr)
        return 2
    rlogging.configure(args.log_format, args.log_level)
    try:
        anyio.run(_main, settings, clients, backend_options=_backend_options())
    except ConfigError as exc:
        print(f"manticore-api: {exc}", file=sys.stderr)
        return 2
    return 0


def _backend_options() -> dict[str, bool]:
    """uvloop when it is installed (the devstack extra has it): a faster loop, same code."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


async def _main(settings: Settings, clients: ClientsConfig) -> None:
    await serve(settings, clients)


if __name__ == "__main__":
    sys.exit(main())
