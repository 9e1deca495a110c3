"""The agent's local health endpoints and check validation, as Consul's agent_endpoint.go has them.

``/v1/agent/health/service/id/<id>`` and ``/name/<name>`` answer with the aggregated status of a
service's checks (and the agent's node checks) as the status code: 200 passing, 429 warning,
503 critical or maintenance, 404 unknown; the status is also ``X-Consul-Reason``, and the whole
body with ``?format=text`` or ``Accept: text/plain``. Every assertion holds against a real agent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def ttl_service(consul_http: httpx.Client) -> Iterator[tuple[str, str]]:
    """A service with one TTL check (critical until it is first passed)."""
    name = f"health-{uuid.uuid4().hex[:8]}"
    r = consul_http.put(
        "/v1/agent/service/register",
        json={"Name": name, "ID": f"{name}-1", "Port": 8080, "Check": {"TTL": "60s"}},
    )
    assert r.status_code == 200, r.text
    yield name, f"{name}-1"
    consul_http.put(f"/v1/agent/service/deregister/{name}-1")
    consul_http.put(f"/v1/agent/service/deregister/{name}-2")


def _check_id(sid: str) -> str:
    return f"service:{sid}"


def test_health_by_id_follows_the_aggregated_status(
    consul_http: httpx.Client, ttl_service: tuple[str, str]
) -> None:
    name, sid = ttl_service
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}")
    assert r.status_code == 503
    assert r.headers["X-Consul-Reason"] == "critical"
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert list(body) == ["AggregatedStatus", "Service", "Checks"]
    assert body["AggregatedStatus"] == "critical"
    assert body["Service"]["ID"] == sid
    assert body["Service"]["Service"] == name
    assert body["Service"]["Port"] == 8080
    [check] = body["Checks"]
    assert check["CheckID"] == _check_id(sid)
    assert check["ServiceID"] == sid
    assert check["Status"] == "critical"

    assert consul_http.put(f"/v1/agent/check/warn/{_check_id(sid)}").status_code == 200
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}")
    assert (r.status_code, r.json()["AggregatedStatus"]) == (429, "warning")

    assert consul_http.put(f"/v1/agent/check/pass/{_check_id(sid)}").status_code == 200
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}")
    assert (r.status_code, r.json()["AggregatedStatus"]) == (200, "passing")
    assert r.headers["X-Consul-Reason"] == "passing"


def test_health_by_id_as_text(consul_http: httpx.Client, ttl_service: tuple[str, str]) -> None:
    _, sid = ttl_service
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}", params={"format": "text"})
    assert (r.status_code, r.text) == (503, "critical")
    assert r.headers["Content-Type"] == "text/plain"
    consul_http.put(f"/v1/agent/check/pass/{_check_id(sid)}")
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}", headers={"Accept": "text/plain"})
    assert (r.status_code, r.text) == (200, "passing")


def test_maintenance_counts_as_unavailable(
    consul_http: httpx.Client, ttl_service: tuple[str, str]
) -> None:
    _, sid = ttl_service
    consul_http.put(f"/v1/agent/check/pass/{_check_id(sid)}")
    r = consul_http.put(f"/v1/agent/service/maintenance/{sid}", params={"enable": "true"})
    assert r.status_code == 200
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}", params={"format": "text"})
    assert (r.status_code, r.text) == (503, "maintenance")
    consul_http.put(f"/v1/agent/service/maintenance/{sid}", params={"enable": "false"})
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}", params={"format": "text"})
    assert (r.status_code, r.text) == (200, "passing")


def test_health_of_an_unknown_service(consul_http: httpx.Client) -> None:
    sid = f"no-such-{uuid.uuid4().hex[:8]}"
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}")
    assert r.status_code == 404
    assert r.headers["X-Consul-Reason"] == f"ServiceId {sid} not found"
    assert r.json() == {"AggregatedStatus": "critical", "Service": None, "Checks": None}
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}", params={"format": "text"})
    assert (r.status_code, r.text) == (404, f"ServiceId {sid} not found")
    r = consul_http.get(f"/v1/agent/health/service/name/{sid}")
    assert r.status_code == 404
    assert r.headers["X-Consul-Reason"] == f"ServiceName {sid} Not Found"
    assert r.json() == []
    r = consul_http.get(f"/v1/agent/health/service/name/{sid}", params={"format": "text"})
    assert (r.status_code, r.text) == (404, f"ServiceName {sid} Not Found")


def test_missing_id_or_name_is_400(consul_http: httpx.Client) -> None:
    r = consul_http.get("/v1/agent/health/service/id/")
    assert (r.status_code, r.text) == (400, "Missing serviceID")
    r = consul_http.get("/v1/agent/health/service/name/")
    assert (r.status_code, r.text) == (400, "Missing service Name")


def test_health_by_name_takes_the_worst_instance(
    consul_http: httpx.Client, ttl_service: tuple[str, str]
) -> None:
    name, sid = ttl_service
    other = f"{name}-2"
    r = consul_http.put(
        "/v1/agent/service/register",
        json={"Name": name, "ID": other, "Port": 8081, "Check": {"TTL": "60s"}},
    )
    assert r.status_code == 200
    consul_http.put(f"/v1/agent/check/pass/{_check_id(sid)}")
    r = consul_http.get(f"/v1/agent/health/service/name/{name}")
    assert r.status_code == 503
    assert r.headers["X-Consul-Reason"] == "critical"
    by_id = {item["Service"]["ID"]: item["AggregatedStatus"] for item in r.json()}
    assert by_id == {sid: "passing", other: "critical"}
    consul_http.put(f"/v1/agent/check/warn/{_check_id(other)}")
    r = consul_http.get(f"/v1/agent/health/service/name/{name}", params={"format": "text"})
    assert (r.status_code, r.text) == (429, "warning")
    consul_http.put(f"/v1/agent/check/pass/{_check_id(other)}")
    r = consul_http.get(f"/v1/agent/health/service/name/{name}")
    assert r.status_code == 200
    assert [item["AggregatedStatus"] for item in r.json()] == ["passing", "passing"]


def test_service_without_checks_is_passing(consul_http: httpx.Client) -> None:
    name = f"bare-{uuid.uuid4().hex[:8]}"
    assert consul_http.put("/v1/agent/service/register", json={"Name": name}).status_code == 200
    try:
        r = consul_http.get(f"/v1/agent/health/service/id/{name}")
        assert r.status_code == 200
        assert r.json()["AggregatedStatus"] == "passing"
        assert r.json()["Checks"] == []
    finally:
        consul_http.put(f"/v1/agent/service/deregister/{name}")


# -- check validation (CheckType.Validate) ---------------------------------------------------

INTERVAL_TEXT = (
    "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
)


@pytest.mark.parametrize(
    "target",
    [{"HTTP": "http://127.0.0.1:1/health"}, {"TCP": "127.0.0.1:1"}, {"Args": ["/bin/true"]}],
)
def test_check_with_a_target_but_no_interval_is_400(
    consul_http: httpx.Client, target: dict
) -> None:
    r = consul_http.put("/v1/agent/check/register", json={"Name": "no-interval", **target})
    assert (r.status_code, r.text) == (400, INTERVAL_TEXT)
    # The same validation guards checks inside a service registration.
    name = f"noint-{uuid.uuid4().hex[:8]}"
    r = consul_http.put(
        "/v1/agent/service/register", json={"Name": name, "Check": {"Name": "c", **target}}
    )
    assert (r.status_code, r.text) == (400, INTERVAL_TEXT)
    assert consul_http.get(f"/v1/agent/service/{name}").status_code == 404
    assert "no-interval" not in consul_http.get("/v1/agent/checks").json()


def test_other_check_validation_texts(consul_http: httpx.Client) -> None:
    cases = [
        ({"Name": "c"}, "Invalid check: TTL must be > 0 for TTL checks"),
        (
            {"Name": "c", "TTL": "10s", "Interval": "10s"},
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            {"Name": "c", "TTL": "10s", "FailuresBeforeWarning": 3, "FailuresBeforeCritical": 1},
            "Invalid check: FailuresBeforeWarning can't be higher than FailuresBeforeCritical",
        ),
    ]
    for body, text in cases:
        r = consul_http.put("/v1/agent/check/register", json=body)
        assert (r.status_code, r.text) == (400, text), body


def test_node_maintenance_makes_every_local_service_unavailable(
    consul_http: httpx.Client, ttl_service: tuple[str, str]
) -> None:
    """The agent's node checks count for each of its services (``ChecksForService(id, true)``)."""
    _, sid = ttl_service
    consul_http.put(f"/v1/agent/check/pass/{_check_id(sid)}")
    r = consul_http.put("/v1/agent/maintenance", params={"enable": "true", "reason": "test"})
    assert r.status_code == 200
    try:
        r = consul_http.get(f"/v1/agent/health/service/id/{sid}")
        assert (r.status_code, r.json()["AggregatedStatus"]) == (503, "maintenance")
        assert "_node_maintenance" in {c["CheckID"] for c in r.json()["Checks"]}
    finally:
        consul_http.put("/v1/agent/maintenance", params={"enable": "false"})
    r = consul_http.get(f"/v1/agent/health/service/id/{sid}", params={"format": "text"})
    assert (r.status_code, r.text) == (200, "passing")


def test_members_lists_this_agent(consul_http: httpx.Client) -> None:
    name = consul_http.get("/v1/agent/self").json()["Config"]["NodeName"]
    members = consul_http.get("/v1/agent/members").json()
    me = [m for m in members if m["Name"] == name]
    assert len(me) == 1
    assert me[0]["Status"] == 1
    assert me[0]["Tags"]["role"] == "consul"


def test_the_health_state_list_shows_every_change_of_a_check(
    consul_http: httpx.Client, ttl_service: tuple[str, str]
) -> None:
    """Each status change (and a service re-registered with new tags) is in the next
    ``/v1/health/state/any``, filtered or not, whatever was answered for that check before."""
    name, sid = ttl_service
    cid = _check_id(sid)
    only = {"filter": f'ServiceName == "{name}"'}

    def mine(field: str, want: object, params: dict[str, str] | None = None) -> None:
        # A real agent syncs its checks to the catalog a moment later.
        deadline = time.monotonic() + 5
        while True:
            checks = consul_http.get("/v1/health/state/any", params=params).json()
            [check] = [c for c in checks if c["CheckID"] == cid]
            if check[field] == want or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert check[field] == want

    mine("Status", "critical")
    for verb, status in (("pass", "passing"), ("warn", "warning"), ("pass", "passing")):
        assert consul_http.put(f"/v1/agent/check/{verb}/{cid}").status_code == 200
        mine("Status", status)
        mine("Status", status, only)
        assert len(consul_http.get("/v1/health/state/any", params=only).json()) == 1
    r = consul_http.put(
        "/v1/agent/service/register",
        json={"Name": name, "ID": sid, "Port": 8080, "Tags": ["v2"], "Check": {"TTL": "60s"}},
    )
    assert r.status_code == 200, r.text
    mine("ServiceTags", ["v2"])
    pretty = consul_http.get("/v1/health/state/any", params={**only, "pretty": ""})
    assert [c["ServiceTags"] for c in pretty.json()] == [["v2"]]
    assert "\n    " in pretty.text
