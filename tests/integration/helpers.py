"""Helpers for integration tests: a Manager on a given Consul, and waiting for KV state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio

from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.controller import Controller, RunnerOptions
from reconciler.manager import Manager, ManagerOptions


def clients_config(consul_address: str, nomad_address: str | None = None) -> ClientsConfig:
    env = {"CONSUL_HTTP_ADDR": consul_address}
    if nomad_address:
        env["NOMAD_ADDR"] = nomad_address
    return ClientsConfig.from_env(env)


@contextlib.asynccontextmanager
async def running(
    controllers: Sequence[Controller],
    consul_address: str,
    *,
    identity: str = "test",
    drain_timeout: float = 5.0,
    nomad_address: str | None = None,
) -> AsyncIterator[tuple[Manager, ConsulClient]]:
    """A started Manager (free metrics port) plus a separate client to poke Consul with."""
    config = clients_config(consul_address, nomad_address)
    manager = Manager(
        controllers,
        options=ManagerOptions(
            metrics_port=0,
            drain_timeout=drain_timeout,
            runner=RunnerOptions(identity=identity),
        ),
        config=config,
    )
    async with ConsulClient(config.consul) as consul, anyio.create_task_group() as tg:
        await tg.start(manager.run)
        try:
            yield manager, consul
        finally:
            manager.stop()


async def eventually(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.01) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            await anyio.sleep(every)


async def wait_for_value(
    consul: ConsulClient, key: str, expected: bytes | None, timeout: float = 10.0
) -> None:
    """Wait until ``key`` holds ``expected`` (None: until it does not exist)."""

    async def matches() -> bool:
        _, entry = await consul.kv_get(key)
        if expected is None:
            return entry is None
        return entry is not None and entry.value == expected

    await eventually(matches, timeout=timeout)
