"""The manager: one process running one or several controllers, plus their health endpoint.

It owns the clients (one Consul client, and a Nomad/ELB client only if some controller needs
them), one :class:`~reconciler.controller.ControllerRunner` per controller, and the
``/metrics``, ``/healthz``, ``/readyz`` server, all inside one task group. Before anything
starts, each controller's declaration is checked against the clients it uses and its
``startup`` hook runs, so a misconfiguration stops the process at once with a clear message.
Shutdown (SIGTERM, SIGINT or :meth:`Manager.stop`) stops every controller: no new work is
started, in-flight reconciles get at most ``drain_timeout`` seconds to finish (leaders still hold
their locks meanwhile, so those writes stay fenced), then leaders release their locks so a
standby takes over at once.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import ConfigError
from reconciler.controller import Controller, ControllerRunner, Dependencies, RunnerOptions
from reconciler.httpserver import HealthServer, Probe
from reconciler.logging import get_logger

log = get_logger("reconciler.manager")


@dataclass(frozen=True)
class ManagerOptions:
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9090
    drain_timeout: float = 30.0
    runner: RunnerOptions = field(default_factory=RunnerOptions)


class Manager:
    def __init__(
        self,
        controllers: Sequence[Controller],
        *,
        options: ManagerOptions | None = None,
        deps: Dependencies | None = None,
        config: ClientsConfig | None = None,
    ) -> None:
        if not controllers:
            raise ConfigError("a manager needs at least one controller")
        names = [c.name for c in controllers]
        if len(set(names)) != len(names):
            raise ConfigError(f"controller names must be unique, got {names}")
        self.controllers = list(controllers)
        self.options = options or ManagerOptions()
        self._given_deps = deps
        self._config = config
        self.runners: dict[str, ControllerRunner] = {}
        self.health: HealthServer | None = None
        self._stop = anyio.Event()
        self._started_at = time.time()
        self._stopped_cleanly: bool | None = None

    # -- probes ------------------------------------------------------------------------------
    def liveness(self) -> Probe:
        return Probe(True, {"uptime_seconds": round(time.time() - self._started_at, 3)})

    def readiness(self) -> Probe:
        detail: dict[str, object] = {}
        ok = bool(self.runners)
        for name, runner in self.runners.items():
            state = (
                "leader"
                if runner.elector is not None and runner.elector.is_leader
                else "standby"
                if runner.leadership_known and runner.elector is not None
                else "unknown"
                if runner.elector is not None
                else "not-elected"
            )
            detail[name] = {
                "sources": {n: s.ready for n, s in runner.sources.items()},
                "leadership": state,
            }
            ok = ok and runner.ready
        return Probe(ok, {"controllers": detail})

    @property
    def ready(self) -> bool:
        return self.readiness().ok

    # -- lifecycle ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _dependencies(self) -> AsyncIterator[Dependencies]:
        if self._given_deps is not None:
            yield self._given_deps
            return
        config = self._config or ClientsConfig.from_env()
        needs = set().union(*(c.needs for c in self.controllers))
        consul = ConsulClient(config.consul)
        deps = Dependencies(consul=consul)
        try:
            if "nomad" in needs:
                from reconciler.clients.nomad import NomadClient

                deps.nomad = NomadClient(config.nomad)
            if "elb" in needs:
                from reconciler.clients.elb import ELBClient

                deps.elb = ELBClient(config.aws)
            yield deps
        finally:
            with anyio.move_on_after(5, shield=True):
                await consul.aclose()
                if deps.nomad is not None:
                    await deps.nomad.aclose()

    async def run(self, *, task_status: TaskStatus[Manager] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run every controller until :meth:`stop`; ``task_status`` is started once serving."""
        async with self._dependencies() as deps:
            self.runners = {
                c.name: ControllerRunner(c, deps, self.options.runner) for c in self.controllers
            }
            for controller in self.controllers:
                if controller.startup is not None:
                    await controller.startup(deps)
            self.health = HealthServer(
                self.options.metrics_host,
                self.options.metrics_port,
                liveness=self.liveness,
                readiness=self.readiness,
            )
            async with anyio.create_task_group() as tg:
                port = await tg.start(self.health.serve)
                log.info(
                    "manager started",
                    controllers=list(self.runners),
                    metrics=f"http://{self.options.metrics_host}:{port}/metrics",
                )
                for runner in self.runners.values():
                    tg.start_soon(runner.run)
                task_status.started(self)
                await self._stop.wait()
                with anyio.CancelScope(shield=True):
                    self._stopped_cleanly = await self._shutdown()
                tg.cancel_scope.cancel()
        log.info("manager stopped", drained=self._stopped_cleanly)

    async def _shutdown(self) -> bool:
        results: dict[str, bool] = {}
        timeout = self.options.drain_timeout

        async def stop_one(name: str, runner: ControllerRunner) -> None:
            results[name] = await runner.stop(timeout)

        with anyio.move_on_after(timeout + 5):
            async with anyio.create_task_group() as tg:
                for name, runner in self.runners.items():
                    tg.start_soon(stop_one, name, runner)
        undrained = [n for n in self.runners if not results.get(n, False)]
        if undrained:
            log.warning("drain timed out; abandoning in-flight work", controllers=undrained)
        return not undrained

    def stop(self) -> None:
        self._stop.set()

    async def run_until_signalled(self) -> bool:
        """Run until SIGTERM/SIGINT, then shut down gracefully. True if everything drained."""
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("signal received, shutting down", signal=signum)
                        self.stop()
                        return

            tg.start_soon(watch_signals)
            await self.run()
            tg.cancel_scope.cancel()
        return bool(self._stopped_cleanly)
