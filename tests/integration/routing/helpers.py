"""Helpers for the routing controllers' tests: users' services in Consul, KV reads, metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import httpx
from prometheus_client import REGISTRY

from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.controller import Controller, RunnerOptions
from reconciler.manager import Manager, ManagerOptions
from reconciler.sources import KVSource

ROLES = {"hmi": ("http", 21000), "broker": ("http", 21001), "core": ("tcp", 21002)}


def service_id(user: str, role: str, alloc: str) -> str:
    return f"_nomad-task-{alloc}-core-core-hmi-{user}-{role}-{role}"


class Services:
    """Registers a user's services in a Consul agent the way Nomad does, with TTL checks whose
    status the test sets."""

    def __init__(self, consul_url: str, token: str | None = None) -> None:
        headers = {"X-Consul-Token": token} if token else {}
        self.http = httpx.Client(base_url=consul_url, timeout=10, headers=headers)

    def close(self) -> None:
        self.http.close()

    def register(
        self,
        user: str,
        *,
        alloc: str | None = None,
        roles: dict[str, tuple[str, int]] | None = None,
        address: str = "10.0.0.5",
        status: str = "passing",
        port_offset: int = 0,
        meta: dict[str, str] | None = None,
    ) -> str:
        alloc = alloc or str(uuid.uuid4())
        for role, (route, port) in (roles or ROLES).items():
            sid = service_id(user, role, alloc)
            body = {
                "ID": sid,
                "Name": f"core-hmi-{user}-{role}",
                "Address": address,
                "Port": port + port_offset,
                "Tags": ["manticore", f"route-{route}"],
                "Meta": meta
                if meta is not None
                else {
                    "manticore_user": user,
                    "manticore_role": role,
                    "manticore_route": route,
                },
                "Check": {"CheckID": f"check:{sid}", "TTL": "600s", "Status": status},
            }
            self.http.put("/v1/agent/service/register", json=body).raise_for_status()
        return alloc

    def set_status(self, user: str, role: str, alloc: str, status: str) -> None:
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        sid = service_id(user, role, alloc)
        self.http.put(f"/v1/agent/check/{verb}/check:{sid}").raise_for_status()

    def deregister(self, user: str, alloc: str, roles: dict[str, Any] | None = None) -> None:
        for role in roles or ROLES:
            self.http.put(
                f"/v1/agent/service/deregister/{service_id(user, role, alloc)}"
            ).raise_for_status()

    def register_web_app(self, sid: str, address: str, port: int, status: str = "passing") -> None:
        body = {
            "ID": sid,
            "Name": "manticore-service",
            "Address": address,
            "Port": port,
            "Check": {"CheckID": f"check:{sid}", "TTL": "600s", "Status": status},
        }
        self.http.put("/v1/agent/service/register", json=body).raise_for_status()


async def read_json(consul: ConsulClient, key: str) -> Any:
    _, entry = await consul.kv_get(key)
    return None if entry is None or entry.value is None else json.loads(entry.value)


async def read_text(consul: ConsulClient, key: str) -> str | None:
    _, entry = await consul.kv_get(key)
    return None if entry is None else entry.text


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@contextlib.asynccontextmanager
async def running_with(
    controllers: Sequence[Controller],
    environ: Mapping[str, str],
    *,
    identity: str = "test",
) -> AsyncIterator[tuple[Manager, ConsulClient]]:
    """A started Manager configured from ``environ`` (Consul, AWS...), plus a Consul client."""
    config = ClientsConfig.from_env(environ)
    manager = Manager(
        controllers,
        options=ManagerOptions(
            metrics_port=0, drain_timeout=5.0, runner=RunnerOptions(identity=identity)
        ),
        config=config,
    )
    async with ConsulClient(config.consul) as consul, anyio.create_task_group() as tg:
        await tg.start(manager.run)
        try:
            yield manager, consul
        finally:
            manager.stop()


def with_frozen_watch(controller: Controller, watch_name: str) -> Controller:
    """``controller`` whose watch ``watch_name`` (a KV one) lists once, then hardly ever again
    (a re-read at most every 100 s): what a reconcile does while that watch lags behind."""

    def frozen(watch: Any) -> Any:
        if watch.name != watch_name:
            return watch
        built = watch.build

        def build(deps: Any) -> Any:
            source = built(deps)
            assert isinstance(source, KVSource)
            source.settings.rate = 0.01
            source.settings.burst = 1
            return source

        return dataclasses.replace(watch, build=build)

    assert any(w.name == watch_name for w in controller.watches), watch_name
    return dataclasses.replace(controller, watches=[frozen(w) for w in controller.watches])
