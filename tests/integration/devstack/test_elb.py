"""The Classic ELB endpoint: boto3 over real HTTP finds the configured load balancer, edits it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import httpx
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


# -- AWS's listener semantics, which moto alone does not have --------------------------------


def error_code(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str]:
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def tcp(*ports: int) -> list[Any]:
    return [Listener("TCP", port, port).to_api() for port in ports]


def test_deleting_several_listeners_in_one_call_removes_each_once(env_client: Any) -> None:
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test", Listeners=tcp(30001, 30002, 30003, 30004)
    )
    env_client.delete_load_balancer_listeners(
        LoadBalancerName="manticore-test", LoadBalancerPorts=[30001, 30003, 39999]
    )

    (lb,) = env_client.describe_load_balancers(LoadBalancerNames=["manticore-test"])[
        "LoadBalancerDescriptions"
    ]
    ports = [d["Listener"]["LoadBalancerPort"] for d in lb["ListenerDescriptions"]]
    assert sorted(ports) == [80, 30002, 30004]  # no duplicates, nothing multiplied


def test_creating_an_identical_listener_again_is_a_no_op(env_client: Any) -> None:
    for _ in range(2):
        env_client.create_load_balancer_listeners(
            LoadBalancerName="manticore-test", Listeners=tcp(30001)
        )
    (lb,) = env_client.describe_load_balancers()["LoadBalancerDescriptions"]
    assert [d["Listener"]["LoadBalancerPort"] for d in lb["ListenerDescriptions"]] == [80, 30001]


def test_a_batch_with_a_duplicate_listener_changes_nothing(env_client: Any) -> None:
    different = Listener("TCP", 80, 9999).to_api()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        env_client.create_load_balancer_listeners(
            LoadBalancerName="manticore-test", Listeners=[*tcp(30001), different]
        )
    assert error_code(exc) == (400, "DuplicateListener")
    assert listeners_of(env_client, "manticore-test") == {("HTTP", 80, 8080)}


def test_the_listener_quota_is_enforced_per_load_balancer(
    endpoint: ELBEndpoint, env_client: Any
) -> None:
    endpoint.set_listener_quota(5)
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test", Listeners=tcp(30001, 30002, 30003, 30004)
    )
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        env_client.create_load_balancer_listeners(
            LoadBalancerName="manticore-test", Listeners=tcp(30005, 30006)
        )
    assert error_code(exc) == (400, "TooManyListeners")
    assert "quota" in exc.value.response["Error"]["Message"]
    assert len(listeners_of(env_client, "manticore-test")) == 5  # 80 and four TCP
    # Re-creating existing listeners does not count against the quota; deleting frees room.
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test", Listeners=tcp(30001, 30002)
    )
    env_client.delete_load_balancer_listeners(
        LoadBalancerName="manticore-test", LoadBalancerPorts=[30004]
    )
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test", Listeners=tcp(30005)
    )
    assert len(listeners_of(env_client, "manticore-test")) == 5


def test_the_default_quota_is_aws_s_100(endpoint: ELBEndpoint, env_client: Any) -> None:
    ports = list(range(31000, 31099))  # 99 more next to the HTTP listener: exactly 100
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test", Listeners=tcp(*ports)
    )
    assert len(listeners_of(env_client, "manticore-test")) == 100
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        env_client.create_load_balancer_listeners(
            LoadBalancerName="manticore-test", Listeners=tcp(31099)
        )
    assert error_code(exc) == (400, "TooManyListeners")


def test_an_unknown_load_balancer_is_an_error_for_both_calls(env_client: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as created:
        env_client.create_load_balancer_listeners(LoadBalancerName="nope", Listeners=tcp(30001))
    with pytest.raises(botocore.exceptions.ClientError) as deleted:
        env_client.delete_load_balancer_listeners(LoadBalancerName="nope", LoadBalancerPorts=[1])
    assert error_code(created) == error_code(deleted) == (400, "LoadBalancerNotFound")


def test_the_instance_protocol_reads_back_as_created(env_client: Any) -> None:
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test",
        Listeners=[
            {
                "Protocol": "HTTPS",
                "LoadBalancerPort": 443,
                "InstanceProtocol": "HTTP",
                "InstancePort": 8080,
                "SSLCertificateId": "arn:aws:iam::123456789012:server-certificate/manticore",
            }
        ],
    )
    (lb,) = env_client.describe_load_balancers()["LoadBalancerDescriptions"]
    (https,) = [
        d["Listener"]
        for d in lb["ListenerDescriptions"]
        if d["Listener"]["LoadBalancerPort"] == 443
    ]
    assert (https["Protocol"], https["InstanceProtocol"], https["InstancePort"]) == (
        "HTTPS",
        "HTTP",
        8080,
    )


@pytest.mark.parametrize(
    ("listener", "code"),
    [
        ({"Protocol": "UDP", "LoadBalancerPort": 53, "InstancePort": 53}, "UnsupportedProtocol"),
        ({"Protocol": "SSL", "LoadBalancerPort": 8443, "InstancePort": 8080}, "ValidationError"),
        (
            {
                "Protocol": "TCP",
                "LoadBalancerPort": 1,
                "InstanceProtocol": "HTTP",
                "InstancePort": 1,
            },
            "InvalidConfigurationRequest",
        ),
    ],
)
def test_invalid_listeners_are_refused(env_client: Any, listener: Any, code: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        env_client.create_load_balancer_listeners(
            LoadBalancerName="manticore-test", Listeners=[listener]
        )
    assert error_code(exc)[1] == code
    assert listeners_of(env_client, "manticore-test") == {("HTTP", 80, 8080)}


def test_throttling_on_demand_answers_as_aws_does(endpoint: ELBEndpoint, env_client: Any) -> None:
    endpoint.throttle(1, ["CreateLoadBalancerListeners"])
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        endpoint.client().create_load_balancer_listeners(  # a client that does not retry
            LoadBalancerName="manticore-test", Listeners=tcp(30001)
        )
    assert error_code(exc) == (400, "Throttling")
    assert exc.value.response["Error"]["Message"] == "Rate exceeded"
    # The fault was used up; reads were never affected.
    env_client.describe_load_balancers()
    env_client.create_load_balancer_listeners(
        LoadBalancerName="manticore-test", Listeners=tcp(30001)
    )
    assert endpoint.throttled() == {"CreateLoadBalancerListeners": 1}
    assert endpoint.calls()["CreateLoadBalancerListeners"] == 2


def test_the_paced_mode_throttles_bursts_of_mutations() -> None:
    # Creating the load balancer on start took one of the three tokens.
    with ELBEndpoint(load_balancer="paced", mutation_rate=1, mutation_burst=3) as paced:
        client = paced.client()
        outcomes = []
        for port in range(30001, 30007):
            try:
                client.create_load_balancer_listeners(LoadBalancerName="paced", Listeners=tcp(port))
                outcomes.append("ok")
            except botocore.exceptions.ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
        assert outcomes[:2] == ["ok", "ok"]
        assert "Throttling" in outcomes
        for _ in range(20):
            client.describe_load_balancers()  # reads are not paced
        assert paced.throttled() == {"CreateLoadBalancerListeners": outcomes.count("Throttling")}


def test_faults_and_calls_over_http(endpoint: ELBEndpoint, env_client: Any) -> None:
    with httpx.Client(base_url=endpoint.url) as http:
        assert http.post("/_devstack/elb/throttle", json={"count": 2}).status_code == 200
        assert http.put("/_devstack/elb/quota", json={"listener_quota": 0}).status_code == 400
        assert http.get("/_devstack/elb/nothing").status_code == 404
        for _ in range(2):
            with pytest.raises(botocore.exceptions.ClientError):
                endpoint.client().delete_load_balancer_listeners(
                    LoadBalancerName="manticore-test", LoadBalancerPorts=[80]
                )
        calls = http.get("/_devstack/elb/calls").json()
    assert calls["throttled"] == {"DeleteLoadBalancerListeners": 2}
    assert listeners_of(env_client, "manticore-test") == {("HTTP", 80, 8080)}


def test_several_load_balancers_are_created() -> None:
    with ELBEndpoint(load_balancer="lb-a, lb-b", listeners=[Listener("HTTP", 80, 8080)]) as two:
        names = {
            lb["LoadBalancerName"]
            for lb in two.client().describe_load_balancers()["LoadBalancerDescriptions"]
        }
        assert {"lb-a", "lb-b"} <= names
        assert two.load_balancers == ("lb-a", "lb-b")
