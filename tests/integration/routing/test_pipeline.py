"""A user's whole way, arrival to departure, through every controller on real parts.

The embedded Consul and Nomad (simulated docker tasks serving their ports, so Consul's real
HTTP and TCP checks pass), the devstack ELB over HTTP, and the waitlist, jobs, allocations,
haproxy-kv and elb controllers in one manager. A request becomes a claim, a Nomad job, passing
services, an allocation record, routes with a reserved subdomain and port, and an ELB listener;
deleting the request removes all of it: no job, no key, no claim, no listener.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controllers import allocations, elb, haproxy_kv, jobs, waitlist
from controllers.api.ids import (
    ALLOCATIONS_PREFIX,
    ELB_PREFIX,
    HAPROXY_DATA_PREFIX,
    REQUESTS_PREFIX,
)
from controllers.settings import Settings
from devstack.elb import ELBEndpoint
from devstack.elb import Listener as DevListener
from devstack.nomad.embedded import EmbeddedNomad
from devstack.nomad.testing import start_embedded_nomad
from reconciler.clients.consul import ConsulClient
from tests.integration.helpers import eventually
from tests.integration.routing.helpers import read_json, running_with

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def nomad(consul_server: Any) -> Iterator[EmbeddedNomad]:
    server = start_embedded_nomad(nodes=2, consul_addr=consul_server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[ELBEndpoint]:
    with ELBEndpoint(load_balancer="pipeline", listeners=[DevListener("HTTP", 80, 8080)]) as e:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
        for name, value in e.env.items():
            monkeypatch.setenv(name, value)
        yield e


def tcp_listeners(aws: ELBEndpoint) -> set[int]:
    (lb,) = aws.client().describe_load_balancers(LoadBalancerNames=["pipeline"])[
        "LoadBalancerDescriptions"
    ]
    ports = {d["Listener"]["LoadBalancerPort"] for d in lb["ListenerDescriptions"]}
    return {p for p in ports if 20000 <= p <= 20999}


async def keys(consul: ConsulClient, prefix: str) -> list[str]:
    _, entries = await consul.kv_list(prefix)
    return sorted(e.key for e in entries)


async def test_a_user_arrives_is_routed_and_listened_then_leaves_without_a_trace(
    consul_server: Any, nomad: EmbeddedNomad, aws: ELBEndpoint
) -> None:
    environ = {
        "CONSUL_HTTP_ADDR": consul_server.address,
        "NOMAD_ADDR": nomad.url,
        **aws.env,
        "DOMAIN_NAME": "manticore.test",
        "ELB_MANTICORE_NAME": "pipeline",
        "MANTICORE_ELB_CALLS_PER_SECOND": "50",
    }
    settings = Settings.from_env(environ)
    controllers = [
        waitlist.build(settings),
        jobs.build(settings),
        allocations.controller,
        haproxy_kv.build(settings.haproxy),
        elb.build(settings.elb, settings.haproxy, drift_every=2.0),
    ]
    async with running_with(controllers, environ) as (manager, consul):
        await eventually(lambda: manager.ready, timeout=30)
        for user in ("ada", "bob"):
            await consul.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")

        async def listened(user: str) -> Any:
            return await read_json(consul, f"{ELB_PREFIX}{user}")

        for user in ("ada", "bob"):
            await eventually(lambda u=user: listened(u), timeout=60)

        for user in ("ada", "bob"):
            record = await read_json(consul, f"{ALLOCATIONS_PREFIX}{user}")
            assert record["job"] == f"core-hmi-{user}"
            assert {"hmi", "broker", "core"} <= set(record["services"])
            routes = await read_json(consul, f"{HAPROXY_DATA_PREFIX}{user}")
            core = record["services"]["core"]
            (tcp,) = routes["tcp"]
            assert tcp["address"] == f"{core['address']}:{core['port']}"
            assert tcp["port"] in tcp_listeners(aws)
            listener = await listened(user)
            assert listener["listeners"][0]["port"] == tcp["port"]
            # The HMI really answers where its route points (simulated docker serves the port).
            hmi = next(r for r in routes["http"] if r["role"] == "hmi")
            async with httpx.AsyncClient(trust_env=False) as http:
                assert (await http.get(f"http://{hmi['address']}/")).status_code == 200

        # bob leaves: everything that was his goes, ada keeps hers.
        bob_port = (await read_json(consul, f"{HAPROXY_DATA_PREFIX}bob"))["tcp"][0]["port"]
        await consul.kv_delete(f"{REQUESTS_PREFIX}bob")

        async def bob_gone() -> bool:
            leftovers = [
                k
                for prefix in ("manticore/", "haproxy/data/")
                for k in await keys(consul, prefix)
                if k.endswith("/bob")
            ]
            routes_held = await keys(consul, "manticore/routes/")
            claims = []
            for key in routes_held:
                _, entry = await consul.kv_get(key)
                if entry is not None and entry.text == "bob":
                    claims.append(key)
            async with httpx.AsyncClient(trust_env=False) as http:
                job = await http.get(f"{nomad.url}/v1/job/core-hmi-bob")
            return (
                not leftovers
                and not claims
                and job.status_code == 404
                and (bob_port not in tcp_listeners(aws))
            )

        await eventually(bob_gone, timeout=60)
        assert await listened("ada") is not None
        assert len(tcp_listeners(aws)) == 1
