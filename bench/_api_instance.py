"""One intake API instance for the benchmarks, whose Consul requests are counted.

``python -m bench._api_instance CONSUL_ADDR PORT``: the real ``serve()`` with a Consul client
whose every HTTP request increments ``bench_api_consul_requests_total{kind}`` (``long-poll`` for
blocking queries, ``other`` for the rest), served on the instance's own ``/metrics``, so the
load generator (another process) can read what each of its requests cost in Consul requests.
"""

from __future__ import annotations

import sys

import anyio
import httpx
from prometheus_client import Counter

from controllers.intake.server import serve
from controllers.settings import APISettings, HAProxySettings, Settings
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient

CONSUL_REQUESTS = Counter(
    "bench_api_consul_requests_total", "Consul requests of the benchmarked instance", ["kind"]
)


async def main(address: str, port: int) -> None:
    clients = ClientsConfig.from_env({"CONSUL_HTTP_ADDR": address})

    async def count(request: httpx.Request) -> None:
        kind = "long-poll" if "index" in request.url.params else "other"
        CONSUL_REQUESTS.labels(kind=kind).inc()

    http = httpx.AsyncClient(
        event_hooks={"request": [count]},
        timeout=httpx.Timeout(10, read=400),
        limits=httpx.Limits(max_connections=32),
        trust_env=False,
    )
    settings = Settings(
        api=APISettings(
            http_port=port, register_service=False, max_streams=20_000, max_streams_per_user=8
        ),
        haproxy=HAProxySettings(domain_name="manticore.bench"),
    )
    await serve(settings, clients, consul_client=ConsulClient(clients.consul, http=http))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), backend_options={"use_uvloop": True})
