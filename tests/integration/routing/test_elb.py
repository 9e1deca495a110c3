"""elb end to end: haproxy/data in the embedded Consul, listeners on the devstack ELB over HTTP.

The endpoint answers as AWS does (atomic batches, the listener quota, ``Throttling``), so what
is checked here is the state of the load balancers as boto3 reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from controllers import elb
from controllers.api.ids import ELB_PREFIX, HAPROXY_DATA_PREFIX
from controllers.settings import ELBSettings, HAProxySettings
from devstack.elb import ELBEndpoint
from devstack.elb import Listener as DevListener
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import ConfigError
from tests.integration.helpers import eventually
from tests.integration.routing.helpers import metric, read_json, running_with

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NAMES = ("lb-a", "lb-b")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[ELBEndpoint]:
    with ELBEndpoint(load_balancer=",".join(NAMES), listeners=[DevListener("HTTP", 80, 8080)]) as e:
        yield e


@pytest.fixture
def aws(endpoint: ELBEndpoint, monkeypatch: pytest.MonkeyPatch) -> ELBEndpoint:
    endpoint.reset()
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    return endpoint


def settings(quota: int = 5, **extra: Any) -> tuple[ELBSettings, HAProxySettings]:
    return (
        ELBSettings.model_validate(
            {
                "ELB_MANTICORE_NAME": NAMES,
                "ELB_WS_PORT": 2020,
                "MANTICORE_ELB_LISTENER_QUOTA": quota,
                "MANTICORE_ELB_CALLS_PER_SECOND": 50,
                **extra,
            }
        ),
        HAProxySettings.model_validate({"HAPROXY_HTTP_LISTEN": 8080}),
    )


def controller(quota: int = 5, **extra: Any) -> Any:
    return elb.build(*settings(quota, **extra), drift_every=1.0)


def environ(consul_server: Any, endpoint: ELBEndpoint) -> dict[str, str]:
    return {"CONSUL_HTTP_ADDR": consul_server.address, **endpoint.env}


def routes(port: int) -> bytes:
    return json.dumps(
        {
            "http": [{"subdomain": "h" * 16, "address": "10.0.0.5:21000", "role": "hmi"}],
            "tcp": [{"port": port, "address": "10.0.0.5:21002", "role": "core"}],
        }
    ).encode()


def listeners(endpoint: ELBEndpoint) -> dict[str, set[tuple[str, int, int]]]:
    client = endpoint.client()
    out: dict[str, set[tuple[str, int, int]]] = {}
    for lb in client.describe_load_balancers(LoadBalancerNames=list(NAMES))[
        "LoadBalancerDescriptions"
    ]:
        out[lb["LoadBalancerName"]] = {
            (
                d["Listener"]["Protocol"],
                d["Listener"]["LoadBalancerPort"],
                d["Listener"]["InstancePort"],
            )
            for d in lb["ListenerDescriptions"]
        }
    return out


def user_ports(endpoint: ELBEndpoint) -> dict[str, set[int]]:
    return {
        name: {port for _, port, _ in found if 20000 <= port <= 20999}
        for name, found in listeners(endpoint).items()
    }


async def add_users(consul: ConsulClient, ports: dict[str, int]) -> None:
    for user, port in ports.items():
        await consul.kv_put(f"{HAPROXY_DATA_PREFIX}{user}", routes(port))


async def test_users_get_listeners_spread_over_two_load_balancers(consul_server, aws) -> None:
    async with running_with([controller()], environ(consul_server, aws)) as (manager, consul):
        await eventually(lambda: manager.ready)
        users = {"ada": 20001, "bob": 20002, "cy": 20003, "dee": 20004}
        await add_users(consul, users)

        def spread() -> bool:
            found = user_ports(aws)
            return sum(len(p) for p in found.values()) == 4

        await eventually(spread, timeout=30)
        found = listeners(aws)
        for name in NAMES:
            # The fixed listeners: HTTP 80 and the websocket port, both to HAProxy's main port.
            assert {("HTTP", 80, 8080), ("TCP", 2020, 8080)} <= found[name]
        per_lb = user_ports(aws)
        assert sorted(len(p) for p in per_lb.values()) == [2, 2]
        for user, port in users.items():
            record = await eventually(lambda u=user: read_json(consul, f"{ELB_PREFIX}{u}"))
            assert port in per_lb[record["load_balancer"]]
            assert record["listeners"] == [
                {"role": "core", "port": port, "instance_port": port, "protocol": "TCP"}
            ]
            assert record["dns_name"].startswith(record["load_balancer"])
        assert ("TCP", 20001, 20001) in found[
            (await read_json(consul, f"{ELB_PREFIX}ada"))["load_balancer"]
        ]

        # bob leaves: his listener and record go, in one delete call; nobody else is touched.
        calls = aws.calls()
        await consul.kv_delete(f"{HAPROXY_DATA_PREFIX}bob")
        await eventually(lambda: 20002 not in set().union(*user_ports(aws).values()), timeout=30)
        await eventually(lambda: _none(read_json(consul, f"{ELB_PREFIX}bob")))
        after = aws.calls()
        assert (
            after.get("DeleteLoadBalancerListeners", 0)
            - calls.get("DeleteLoadBalancerListeners", 0)
            == 1
        )
        assert after.get("CreateLoadBalancerListeners", 0) == calls.get(
            "CreateLoadBalancerListeners", 0
        )
        assert set().union(*user_ports(aws).values()) == {20001, 20003, 20004}

        # A listener deleted by hand on AWS comes back on the next drift pass.
        ada_lb = (await read_json(consul, f"{ELB_PREFIX}ada"))["load_balancer"]
        aws.client().delete_load_balancer_listeners(
            LoadBalancerName=ada_lb, LoadBalancerPorts=[20001]
        )
        await eventually(lambda: 20001 in user_ports(aws)[ada_lb], timeout=30)
        await eventually(lambda: metric("manticore_elb_users_with_listener") == 3, timeout=30)


async def test_users_beyond_capacity_are_reported_and_served_when_room_frees(
    consul_server, aws
) -> None:
    # Quota 4 with two fixed listeners: two user listeners per load balancer, four in all.
    async with running_with([controller(quota=4)], environ(consul_server, aws)) as (
        manager,
        consul,
    ):
        await eventually(lambda: manager.ready)
        await add_users(consul, {f"u{i}": 20010 + i for i in range(4)})
        await eventually(lambda: sum(len(p) for p in user_ports(aws).values()) == 4, timeout=30)
        await add_users(consul, {"late": 20020})
        status = await eventually(lambda: read_json(consul, "reconciler/status/elb/late"))
        assert status["phase"] == "OverCapacity"
        await eventually(lambda: metric("manticore_elb_users_over_capacity") == 1, timeout=30)
        assert await read_json(consul, f"{ELB_PREFIX}late") is None
        for name in NAMES:
            assert len(listeners(aws)[name]) == 4  # never above the quota
        assert metric("manticore_elb_listener_quota", {"load_balancer": "lb-a"}) == 4

        # u0 leaves: late takes the freed slot (created after u0's listener is removed).
        await consul.kv_delete(f"{HAPROXY_DATA_PREFIX}u0")
        await eventually(lambda: read_json(consul, f"{ELB_PREFIX}late"), timeout=30)
        assert 20010 not in set().union(*user_ports(aws).values())
        assert 20020 in set().union(*user_ports(aws).values())
        await eventually(lambda: _none(read_json(consul, "reconciler/status/elb/late")))
        await eventually(lambda: metric("manticore_elb_users_over_capacity") == 0, timeout=30)


async def test_throttling_is_retried_with_backoff_until_it_converges(consul_server, aws) -> None:
    throttled_before = metric(
        "manticore_elb_api_calls_total",
        {"call": "CreateLoadBalancerListeners", "outcome": "throttled"},
    )
    # More throttled answers than botocore's own retries: the controller's backoff takes over.
    aws.throttle(8, ["CreateLoadBalancerListeners"])
    async with running_with([controller()], environ(consul_server, aws)) as (manager, consul):
        await eventually(lambda: manager.ready)
        await add_users(consul, {"ada": 20001})
        await eventually(lambda: read_json(consul, f"{ELB_PREFIX}ada"), timeout=60)
        assert aws.throttled()["CreateLoadBalancerListeners"] == 8
        assert (
            metric(
                "manticore_elb_api_calls_total",
                {"call": "CreateLoadBalancerListeners", "outcome": "throttled"},
            )
            > throttled_before
        )
        assert 20001 in set().union(*user_ports(aws).values())


async def test_a_lower_quota_on_aws_is_learned_and_users_go_elsewhere(consul_server, aws) -> None:
    aws.set_listener_quota(3)  # AWS allows 3; we were told 5
    async with running_with([controller(quota=5)], environ(consul_server, aws)) as (
        manager,
        consul,
    ):
        await eventually(lambda: manager.ready)
        await add_users(consul, {"ada": 20001, "bob": 20002, "cy": 20003})
        # Each load balancer has room for one user beside the two fixed listeners.
        await eventually(lambda: sum(len(p) for p in user_ports(aws).values()) == 2, timeout=60)
        await eventually(lambda: metric("manticore_elb_users_over_capacity") == 1, timeout=60)
        for name in NAMES:
            assert len(listeners(aws)[name]) == 3
        assert min(metric("manticore_elb_listener_quota", {"load_balancer": n}) for n in NAMES) == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs ELB_MANTICORE_NAME"),
        ({"ELB_MANTICORE_NAME": ("a",), "ELB_WS_PORT": 20005}, "inside TCP_PORT_RANGE"),
        ({"ELB_MANTICORE_NAME": ("a",), "MANTICORE_ELB_LISTENER_QUOTA": 1}, "leaves no room"),
    ],
)
async def test_the_controller_refuses_to_start_with_a_clear_message(
    env: dict[str, Any], message: str
) -> None:
    bare = elb.build(ELBSettings.model_validate(env), HAProxySettings.model_validate({}))
    assert bare.startup is not None
    with pytest.raises(ConfigError, match=message):
        await bare.startup(None)  # type: ignore[arg-type]


async def _none(value: Any) -> bool:
    return (await value) is None


async def test_unreadable_routes_keep_the_user_s_listener_and_alter_no_one(
    consul_server, aws
) -> None:
    async with running_with([controller()], environ(consul_server, aws)) as (manager, consul):
        await eventually(lambda: manager.ready)
        await add_users(consul, {"ada": 20001, "bob": 20002})
        await eventually(lambda: read_json(consul, f"{ELB_PREFIX}ada"), timeout=30)
        await eventually(lambda: read_json(consul, f"{ELB_PREFIX}bob"), timeout=30)
        ada = await read_json(consul, f"{ELB_PREFIX}ada")

        await consul.kv_put(f"{HAPROXY_DATA_PREFIX}ada", b"{not json")
        await add_users(consul, {"cy": 20003})
        await eventually(lambda: read_json(consul, f"{ELB_PREFIX}cy"), timeout=30)
        status = await eventually(lambda: read_json(consul, "reconciler/status/elb/ada"))
        assert status["phase"] == "Invalid"
        # ada keeps her listener and record; the others are served.
        assert 20001 in set().union(*user_ports(aws).values())
        assert await read_json(consul, f"{ELB_PREFIX}ada") == ada
        assert {20001, 20002, 20003} <= set().union(*user_ports(aws).values())
