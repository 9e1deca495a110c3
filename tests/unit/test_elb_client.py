"""The Classic ELB client against moto's server mode over real HTTP, plus its error table.

The endpoint reaches boto3 the way production configures it, through
``AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING``, which botocore honours by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from moto.server import ThreadedMotoServer

from reconciler.clients.config import AWSConfig
from reconciler.clients.elb import ELBClient, Listener, LoadBalancer, translate_botocore_error
from reconciler.clients.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    Conflict,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Throttled,
    Timeout,
    TooLarge,
    Unavailable,
)

REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_REGION", REGION)
    return moto_endpoint


@pytest.fixture
def load_balancer(aws_env: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"lb-{abs(hash(request.node.name)) % 10**8}"
    raw = boto3.client("elb", region_name=REGION)
    raw.create_load_balancer(
        LoadBalancerName=name,
        Listeners=[
            {
                "Protocol": "HTTP",
                "LoadBalancerPort": 80,
                "InstanceProtocol": "HTTP",
                "InstancePort": 8080,
            }
        ],
        AvailabilityZones=[f"{REGION}a"],
    )
    yield name
    raw.delete_load_balancer(LoadBalancerName=name)


@pytest.mark.anyio
async def test_endpoint_comes_from_the_standard_environment_variable(aws_env: str) -> None:
    client = ELBClient(AWSConfig.from_env())
    boto = await client._boto()
    assert boto.meta.endpoint_url == aws_env
    assert boto.meta.region_name == REGION


@pytest.mark.anyio
async def test_listener_lifecycle(load_balancer: str) -> None:
    client = ELBClient(AWSConfig.from_env(), max_attempts=1)
    lb = await client.describe_load_balancer(load_balancer)
    assert isinstance(lb, LoadBalancer)
    assert lb.listeners == (Listener(80, 8080, "HTTP", "HTTP"),)

    new = [Listener(30001, 30001), Listener(30002, 30002)]
    await client.create_listeners(load_balancer, new)
    ports = [lst.load_balancer_port for lst in await client.describe_listeners(load_balancer)]
    assert ports == [80, 30001, 30002]

    # Creating an identical listener again is a no-op, so retries are safe.
    await client.create_listeners(load_balancer, [Listener(30001, 30001)])
    assert len(await client.describe_listeners(load_balancer)) == 3

    await client.delete_listeners(load_balancer, [30001])
    listeners = await client.describe_listeners(load_balancer)
    assert [lst.load_balancer_port for lst in listeners] == [80, 30002]
    assert listeners[1] == Listener(30002, 30002, "TCP", "TCP")

    all_lbs = await client.describe_load_balancers()
    assert load_balancer in {lb.name for lb in all_lbs}


@pytest.mark.anyio
async def test_a_port_taken_by_another_listener_is_a_conflict(load_balancer: str) -> None:
    client = ELBClient(AWSConfig.from_env(), max_attempts=1)
    with pytest.raises(Conflict, match="DuplicateListener"):
        await client.create_listeners(load_balancer, [Listener(80, 9999, "TCP", "TCP")])


@pytest.mark.anyio
async def test_missing_load_balancer_is_not_found(aws_env: str) -> None:
    client = ELBClient(AWSConfig.from_env(), max_attempts=1)
    with pytest.raises(NotFound) as info:
        await client.describe_listeners("no-such-lb")
    assert isinstance(info.value.__cause__, botocore.exceptions.ClientError)


@pytest.mark.anyio
async def test_empty_batches_make_no_call() -> None:
    client = ELBClient(AWSConfig(region=REGION))
    await client.create_listeners("whatever", [])
    await client.delete_listeners("whatever", [])
    assert client._client is None  # not even a boto3 client was built


def client_error(code: str, status: int = 400, message: str = "msg") -> Exception:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "CreateLoadBalancerListeners")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("Throttling"), Throttled),
        (client_error("RequestLimitExceeded", 503), Throttled),
        (client_error("SomethingNew", 429), Throttled),
        (client_error("LoadBalancerNotFound"), NotFound),
        (client_error("ListenerNotFound"), NotFound),
        (client_error("DuplicateListener"), Conflict),
        (client_error("TooManyListeners"), QuotaExceeded),
        (client_error("TooManyLoadBalancers"), QuotaExceeded),
        (client_error("AccessDenied", 403), PermissionDenied),
        (client_error("InvalidClientTokenId", 403), PermissionDenied),
        (client_error("ValidationError"), BadRequest),
        (client_error("InvalidConfigurationRequest", 409), BadRequest),
        (client_error("SomethingNew", 400), ClientError),
        (client_error("InternalFailure", 500), Unavailable),
        (client_error("ServiceUnavailable", 503), Unavailable),
        (botocore.exceptions.NoCredentialsError(), ConfigError),
        (botocore.exceptions.NoRegionError(), ConfigError),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), Timeout),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), Unavailable),
    ],
)
def test_error_table(exc: Exception, expected: type[Exception]) -> None:
    translated = translate_botocore_error(exc, what="op")
    assert type(translated) is expected


def test_quota_is_a_kind_of_too_large_and_other_errors_pass_through() -> None:
    assert issubclass(QuotaExceeded, TooLarge)
    err = ValueError("not ours")
    assert translate_botocore_error(err, what="op") is err


@pytest.mark.anyio
async def test_unreachable_endpoint_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = ELBClient(AWSConfig(region=REGION), max_attempts=1, connect_timeout=1)
    with pytest.raises(Unavailable):
        await client.describe_load_balancers()
