"""Each routing controller runs with nothing but its published ACL policy (charts/policies/).

The Consul agent runs with ``default_policy=deny``; each controller gets a token made from its
own policy file, converges a real scenario with it, and that token can write exactly the keys
its controller owns and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controllers import allocations, elb, haproxy_kv
from controllers.api.ids import ALLOCATIONS_PREFIX, ELB_PREFIX, HAPROXY_DATA_PREFIX, REQUESTS_PREFIX
from controllers.settings import ELBSettings, HAProxySettings
from devstack.consul import ConsulServer
from devstack.elb import ELBEndpoint
from devstack.elb import Listener as DevListener
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import PermissionDenied
from tests.integration.helpers import eventually
from tests.integration.routing.helpers import Services, read_json, running_with

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[3]
MASTER = "root-token-for-routing-tests"

OWNED = {
    "allocations": [
        "manticore/allocations/data/x",
        "reconciler/status/allocations/x",
        "reconciler/leader/allocations",
    ],
    "haproxy-kv": [
        "haproxy/data/x",
        "haproxy/webAppAddresses/0",
        "haproxy/domainName",
        "haproxy/mainPort",
        "manticore/routes/data/x",
        "manticore/routes/tcp/20000",
        "manticore/routes/subdomains/abcdefghijklmnop",
        "reconciler/status/haproxy-kv/x",
        "reconciler/leader/haproxy-kv",
    ],
    "elb": ["manticore/elb/data/x", "reconciler/status/elb/x", "reconciler/leader/elb"],
}
OTHERS = [
    "manticore/requests/data/x",
    "manticore/waiting/data",
    "manticore/other",
    "reconciler/leader/waitlist",
    "reconciler/leader/jobs",
    "reconciler/status/jobs/x",
    "examples/greetings/out/x",
    "somebody/else",
]


@pytest.fixture
def acl_consul() -> Iterator[ConsulServer]:
    with ConsulServer(acl_master_token=MASTER, acl_default_policy="deny") as server:
        yield server


def create_token(address: str, name: str) -> str:
    policy_file = ROOT / "charts" / "policies" / f"{name}.hcl"
    headers = {"X-Consul-Token": MASTER}
    with httpx.Client(base_url=f"http://{address}", headers=headers) as http:
        http.put(
            "/v1/acl/policy", json={"Name": name, "Rules": policy_file.read_text()}
        ).raise_for_status()
        token = http.put("/v1/acl/token", json={"Policies": [{"Name": name}]})
        token.raise_for_status()
        return str(token.json()["SecretID"])


def env(server: ConsulServer, token: str) -> dict[str, str]:
    return {"CONSUL_HTTP_ADDR": server.address, "CONSUL_HTTP_TOKEN": token}


async def assert_writes_only_what_it_owns(server: ConsulServer, name: str, token: str) -> None:
    config = ClientsConfig.from_env(env(server, token))
    async with ConsulClient(config.consul) as limited:
        owned = OWNED[name]
        for key in owned:
            if key.startswith("reconciler/leader/"):
                continue  # held through a session; a plain write would steal the lock
            assert await limited.kv_put(key, b"probe"), key
            await limited.kv_delete(key)
        others = [k for c, keys in OWNED.items() if c != name for k in keys] + OTHERS
        for key in others:
            with pytest.raises(PermissionDenied):
                await limited.kv_put(key, b"probe")


@pytest.fixture
def root_services(acl_consul: ConsulServer) -> Iterator[Services]:
    registry = Services(acl_consul.url, token=MASTER)
    yield registry
    registry.close()


async def test_allocations_with_its_own_policy(acl_consul, root_services: Services) -> None:
    token = create_token(acl_consul.address, "allocations")
    await assert_writes_only_what_it_owns(acl_consul, "allocations", token)
    root_env = env(acl_consul, MASTER)
    async with (
        running_with([allocations.controller], env(acl_consul, token)) as (manager, _),
        _root(root_env) as root,
    ):
        await eventually(lambda: manager.ready and manager.runners["allocations"].is_leader)
        await root.kv_put(f"{REQUESTS_PREFIX}ada", b"{}")
        alloc = root_services.register("ada")
        record = await eventually(lambda: read_json(root, f"{ALLOCATIONS_PREFIX}ada"))
        assert record["allocation"] == alloc
        # Consul filters what the token may not read: other teams' services stay invisible.
        root_services.http.put(
            "/v1/agent/service/register", json={"Name": "payments", "Port": 1}
        ).raise_for_status()
        async with ConsulClient(ClientsConfig.from_env(env(acl_consul, token)).consul) as mine:
            _, names = await mine.catalog_services()
        assert "payments" not in names
        assert "core-hmi-ada-hmi" in names


async def test_haproxy_kv_with_its_own_policy(acl_consul, root_services: Services) -> None:
    token = create_token(acl_consul.address, "haproxy-kv")
    await assert_writes_only_what_it_owns(acl_consul, "haproxy-kv", token)
    controller = haproxy_kv.build(HAProxySettings.model_validate({"DOMAIN_NAME": "m.test"}))
    async with (
        running_with([controller], env(acl_consul, token)) as (manager, _),
        _root(env(acl_consul, MASTER)) as root,
    ):
        await eventually(lambda: manager.ready and manager.runners["haproxy-kv"].is_leader)
        await root.kv_put(f"{REQUESTS_PREFIX}ada", b"{}")
        await root.kv_put(f"{ALLOCATIONS_PREFIX}ada", allocation_record("ada"))
        routes = await eventually(lambda: read_json(root, f"{HAPROXY_DATA_PREFIX}ada"))
        assert len(routes["http"]) == 2
        assert len(routes["tcp"]) == 1
        root_services.register_web_app("web-1", "10.0.1.1", 4000)
        await eventually(lambda: _text(root, "haproxy/webAppAddresses/0", "10.0.1.1:4000"))
        await eventually(lambda: _text(root, "haproxy/domainName", "m.test"))
        await root.kv_delete(f"{REQUESTS_PREFIX}ada")
        await eventually(lambda: _gone(root, "manticore/routes/data/ada"))


async def test_elb_with_its_own_policy(acl_consul, monkeypatch: pytest.MonkeyPatch) -> None:
    token = create_token(acl_consul.address, "elb")
    await assert_writes_only_what_it_owns(acl_consul, "elb", token)
    with ELBEndpoint(load_balancer="lp-elb", listeners=[DevListener("HTTP", 80, 8080)]) as aws:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
        for name, value in aws.env.items():
            monkeypatch.setenv(name, value)
        controller = elb.build(
            ELBSettings.model_validate({"ELB_MANTICORE_NAME": ("lp-elb",)}),
            HAProxySettings.model_validate({}),
            drift_every=1.0,
        )
        async with (
            running_with([controller], {**env(acl_consul, token), **aws.env}) as (manager, _),
            _root(env(acl_consul, MASTER)) as root,
        ):
            await eventually(lambda: manager.ready and manager.runners["elb"].is_leader)
            routes = {"tcp": [{"port": 20007, "address": "10.0.0.5:21002", "role": "core"}]}
            await root.kv_put(f"{HAPROXY_DATA_PREFIX}ada", json.dumps(routes).encode())
            record = await eventually(lambda: read_json(root, f"{ELB_PREFIX}ada"), timeout=30)
            assert record["load_balancer"] == "lp-elb"


def allocation_record(user: str) -> bytes:
    return json.dumps(
        {
            "services": {
                "hmi": {"address": "10.0.0.5", "port": 21000, "route": "http"},
                "broker": {"address": "10.0.0.5", "port": 21001, "route": "http"},
                "core": {"address": "10.0.0.5", "port": 21002, "route": "tcp"},
            },
            "job": f"core-hmi-{user}",
            "allocation": "3a1f9d3e-1111-4222-8333-444455556666",
            "node": "node-1",
        }
    ).encode()


def _root(environ: dict[str, str]) -> ConsulClient:
    return ConsulClient(ClientsConfig.from_env(environ).consul)


async def _text(consul: ConsulClient, key: str, expected: str) -> bool:
    _, entry = await consul.kv_get(key)
    return entry is not None and entry.text == expected


async def _gone(consul: ConsulClient, key: str) -> bool:
    _, entry = await consul.kv_get(key)
    return entry is None
