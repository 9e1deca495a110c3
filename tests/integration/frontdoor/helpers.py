"""Running intake API instances in-process against an embedded Consul, and reading their SSE."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from controllers.intake.server import Running, serve
from controllers.settings import APISettings, HAProxySettings, Settings, UsageSettings
from reconciler.clients.config import ClientsConfig

REQ = "manticore/requests/data/"
PAGE = "manticore/waiting/data"


def api_settings(**api: Any) -> Settings:
    usage = api.pop("usage", None) or UsageSettings(usage_duration=600, warning_duration=60)
    haproxy = api.pop("haproxy", None) or HAProxySettings(domain_name="manticore.test")
    elb = api.pop("elb", None)
    extra = {"elb": elb} if elb is not None else {}
    return Settings(api=APISettings(http_port=0, **api), usage=usage, haproxy=haproxy, **extra)


@contextlib.asynccontextmanager
async def intake(
    consul_address: str,
    settings: Settings | None = None,
    *,
    token: str | None = None,
    **options: Any,
) -> AsyncIterator[Running]:
    """A started instance (caches warm), stopped on exit."""
    env = {"CONSUL_HTTP_ADDR": consul_address}
    if token:
        env["CONSUL_HTTP_TOKEN"] = token
    async with anyio.create_task_group() as tg:
        running: Running = await tg.start(
            lambda task_status: serve(
                settings or api_settings(),
                ClientsConfig.from_env(env),
                install_signals=False,
                task_status=task_status,
                **options,
            )
        )
        await running.front.cache.wait_ready()
        try:
            yield running
        finally:
            running.stop()


def base_url(running: Running) -> str:
    return f"http://127.0.0.1:{running.port}"


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of an SSE response, as they arrive."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def page(claimed: list[str] = (), waiting: list[str] = ()) -> bytes:  # type: ignore[assignment]
    body = {u: {"claimed": True, "queue": n} for n, u in enumerate(claimed)}
    body.update({u: {"claimed": False, "queue": 100 + n} for n, u in enumerate(waiting)})
    return json.dumps(body).encode()


def routes(hmi: str = "h" * 16, broker: str = "b" * 16, core_port: int = 20001) -> bytes:
    return json.dumps(
        {
            "http": [
                {"subdomain": hmi, "address": "127.0.0.1:9001", "role": "hmi"},
                {"subdomain": broker, "address": "127.0.0.1:9002", "role": "broker"},
            ],
            "tcp": [{"port": core_port, "address": "127.0.0.1:9003", "role": "core"}],
        }
    ).encode()


class ThreadedAPI:
    """An instance on a thread of its own, for sync callers (schemathesis, the browser)."""

    def __init__(self, consul_address: str, settings: Settings | None = None, **options: Any):
        self.consul_address = consul_address
        self.settings = settings or api_settings()
        self.options = options
        self.running: Running | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="intake-api", daemon=True)

    def __enter__(self) -> ThreadedAPI:
        self._thread.start()
        if not self._started.wait(30) or self.running is None:
            raise RuntimeError(f"the API did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running is not None:
            self.running.stop()
        self._thread.join(30)

    @property
    def url(self) -> str:
        assert self.running is not None
        return base_url(self.running)

    def _run(self) -> None:
        async def main() -> None:
            async with intake(self.consul_address, self.settings, **self.options) as running:
                self.running = running
                self._started.set()
                while not running._left:
                    await anyio.sleep(0.05)

        try:
            anyio.run(main)
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._started.set()
