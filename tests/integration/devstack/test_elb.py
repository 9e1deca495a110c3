"""The Classic ELB endpoint: boto3 over real HTTP finds the configured load balancer, edits it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.elb import ELBEndpoint, Listener, aws_env
from devstack.process import http_ok

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint() -> Iterator[ELBEndpoint]:
    with ELBEndpoint(
        load_balancer="manticore-test",
        listeners=[Listener("HTTP", 80, 8080)],
    ) as running:
        yield running


@pytest.fixture
def env_client(endpoint: ELBEndpoint, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client configured only by the environment the endpoint hands out, as a controller is."""
    endpoint.reset()
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    return boto3.session.Session().client("elb")


def listeners_of(client: Any, name: str) -> set[tuple[str, int, int]]:
    (lb,) = client.describe_load_balancers(LoadBalancerNames=[name])["LoadBalancerDescriptions"]
    return {
        (
            d["Listener"]["Protocol"],
            d["Listener"]["LoadBalancerPort"],
            d["Listener"]["InstancePort"],
        )
        for d in lb["ListenerDescriptions"]
    }


def test_the_configured_load_balancer_exists(endpoint: ELBEndpoint, env_client: Any) -> None:
    assert env_client.meta.endpoint_url == endpoint.url
    (lb,) = env_client.describe_load_balancers()["LoadBalancerDescriptions"]

    assert lb["LoadBalancerName"] == "manticore-test"
    assert lb["AvailabilityZones"] == ["us-east-1a"]
    assert listeners_of(env_client, "manticore-test") == {("HTTP", 80, 8080)}
    assert endpoint.url.startswith("http://127.0.0.1:")
    assert http_ok(endpoint.health_url)


def test_listeners_can_be_added_and_removed(env_client: Any) -> None:
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test",
        Listeners=[Listener("TCP", 30001, 30001).to_api(), Listener("TCP", 30002, 30002).to_api()],
    )
    assert listeners_of(env_client, "manticore-test") == {
        ("HTTP", 80, 8080),
        ("TCP", 30001, 30001),
        ("TCP", 30002, 30002),
    }

    env_client.delete_load_balancer_listeners(
        LoadBalancerName="manticore-test", LoadBalancerPorts=[30001]
    )
    assert listeners_of(env_client, "manticore-test") == {("HTTP", 80, 8080), ("TCP", 30002, 30002)}


def test_reset_brings_back_only_the_configured_load_balancer(
    endpoint: ELBEndpoint, env_client: Any
) -> None:
    env_client.create_load_balancer(
        LoadBalancerName="stray",
        Listeners=[Listener().to_api()],
        AvailabilityZones=["us-east-1a"],
    )
    endpoint.reset()

    names = [
        lb["LoadBalancerName"]
        for lb in env_client.describe_load_balancers()["LoadBalancerDescriptions"]
    ]
    assert names == ["manticore-test"]


def test_the_endpoint_refuses_a_busy_port(endpoint: ELBEndpoint) -> None:
    with pytest.raises(OSError):
        ELBEndpoint(port=endpoint.port).start()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HTTP:80:8080", Listener("HTTP", 80, 8080)),
        ("tcp:30001:30001", Listener("TCP", 30001, 30001)),
        ("80:80", Listener("HTTP", 80, 80)),
    ],
)
def test_listener_parsing(text: str, expected: Listener) -> None:
    assert Listener.parse(text) == expected
    assert Listener.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["HTTP:80", "UDP:53:53", "HTTP:eighty:80", ""])
def test_listener_parsing_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="listener"):
        Listener.parse(text)


def test_aws_env_has_fake_credentials_and_the_region() -> None:
    env = aws_env("http://127.0.0.1:5000", "eu-west-1")
    assert env["AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING"] == "http://127.0.0.1:5000"
    assert env["AWS_DEFAULT_REGION"] == env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_ACCESS_KEY_ID"]
    assert env["AWS_SECRET_ACCESS_KEY"]
