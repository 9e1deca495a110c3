"""Malformed and hostile input: a clear 4xx, never a 5xx, never another user's keys.

schemathesis generates requests from the API's own OpenAPI document (valid and invalid ones)
and checks every answer: no server error, status codes, content types and bodies as documented.
Hand-written cases cover what a generator does not aim at: path tricks, oversized and chunked
bodies, forged, expired and other users' tokens.
"""

from __future__ import annotations

import datetime as dt
import json

import httpx
import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from devstack.consul import ConsulServer
from tests.integration.frontdoor.helpers import REQ, ThreadedAPI, api_settings

pytestmark = [pytest.mark.integration]

SECRET = "a-test-secret-of-at-least-32-bytes-long"
OTHER = "not-the-secret-but-just-as-long-as-it"


def token(user: str, *, secret: str = SECRET, expires_in: float = 300, **claims) -> str:
    payload = {"user_id": user, "exp": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def consul():
    with ConsulServer(node_name="hostile") as server:
        yield server


@pytest.fixture(scope="module")
def api(consul):
    with ThreadedAPI(consul.address, stream_max_seconds=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def jwt_api(consul):
    settings = api_settings(jwt_secret=SECRET, register_service=False)
    with ThreadedAPI(consul.address, settings, stream_max_seconds=1.0) as running:
        yield running


def kv_keys(consul) -> dict[str, bytes]:
    with httpx.Client(base_url=f"http://{consul.address}") as http:
        got = http.get("/v1/kv/manticore/", params={"recurse": "true"})
        return {} if got.status_code == 404 else {e["Key"]: e["Value"] for e in got.json()}


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


@pytest.fixture(scope="module")
def jwt_schema(jwt_api):
    return schemathesis.openapi.from_url(f"{jwt_api.url}/openapi.json")


CHECKS = {
    "checks": [
        schemathesis.checks.not_a_server_error,
        schemathesis.checks.status_code_conformance,
        schemathesis.checks.content_type_conformance,
        schemathesis.checks.response_schema_conformance,
        schemathesis.checks.response_headers_conformance,
        schemathesis.checks.negative_data_rejection,
    ]
}
# Bounded: a fixed number of examples per operation and generation mode (valid and invalid).
EXAMPLES = 25


def fuzz(schema, check=None) -> int:
    """Run every operation of ``schema`` in both generation modes; returns the calls made.

    (Driven through hypothesis directly: schemathesis' pytest plugin does not load under the
    pytest this project uses.)
    """
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def run(case) -> None:
                nonlocal calls
                response = case.call_and_validate(**CHECKS)
                calls += 1
                if check is not None:
                    check(case, response)

            try:
                run()
            except Unsatisfiable:
                # Nothing can be made invalid (an operation without parameters or body).
                assert mode is schemathesis.GenerationMode.NEGATIVE
    return calls


# schemathesis draws from `random` inside its strategies, which hypothesis deprecates.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.timeout(600)
def test_generated_requests_get_documented_answers(api_schema, api, consul) -> None:
    calls = fuzz(api_schema)
    assert calls >= EXAMPLES * 4


# schemathesis draws from `random` inside its strategies, which hypothesis deprecates.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.timeout(600)
def test_generated_requests_without_a_token_are_refused_cleanly(jwt_schema) -> None:
    def refused(case, response) -> None:
        if case.path.startswith("/api/v1/requests"):
            assert response.status_code in (400, 401, 413, 422), response.text

    fuzz(jwt_schema, refused)


def test_a_live_event_stream_matches_its_documented_events(api_schema, api) -> None:
    """The generator reaches a live stream only when it happens to create its id first: this
    case always does, and each event must match the schema the document gives for one event."""
    with httpx.Client(base_url=api.url) as http:
        assert http.post("/api/v1/requests", json={"id": "streamer"}).status_code == 200
    operation = api_schema["/api/v1/requests/{user_id}/events"]["GET"]
    case = operation.Case(path_parameters={"user_id": "streamer"})
    response = case.call_and_validate(**CHECKS)
    assert response.status_code == 200
    assert b"event: status" in response.content


def test_odd_ids_and_path_tricks_touch_no_key(api, consul) -> None:
    with httpx.Client(base_url=api.url) as http:
        assert http.post("/api/v1/requests", json={"id": "victim"}).status_code == 200
        before = kv_keys(consul)
        for path in (
            "/api/v1/requests/..%2Fvictim",
            "/api/v1/requests/%2e%2e",
            "/api/v1/requests/a.b",
            "/api/v1/requests/" + "x" * 65,
            "/api/v1/requests/v%C3%AFctim",
            "/api/v1/requests/victim%00",
            "/api/v1/requests/victim%2Fdata",
        ):
            for method in ("GET", "DELETE"):
                answer = http.request(method, path)
                assert 400 <= answer.status_code < 500, (method, path, answer.status_code)
        for body in (
            {"id": "../victim"},
            {"id": "victim/x"},
            {"id": ""},
            {"id": "ok", "core": {"version": "8.2.0; rm -rf"}},
            {"id": "ok", "unknown": 1},
            {"id": 5},
            [],
        ):
            answer = http.post("/api/v1/requests", json=body)
            assert answer.status_code == 422, (body, answer.text)
        not_offered = http.post("/api/v1/requests", json={"id": "ok", "core": {"version": "9.9"}})
        assert not_offered.status_code == 400
        assert "not offered" in not_offered.json()["detail"]
        bad_json = http.post(
            "/api/v1/requests", content=b'{"id": ', headers={"Content-Type": "application/json"}
        )
        assert bad_json.status_code == 422
        big = http.post(
            "/api/v1/requests",
            content=json.dumps({"id": "ok", "pad": "x" * 100_000}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413
        assert "larger than" in big.json()["detail"]

        def chunks():
            for _ in range(100):
                yield b"x" * 1024

        chunked = http.post(
            "/api/v1/requests", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413
        metrics = http.get("/metrics").text
    assert kv_keys(consul) == before
    assert 'manticore_api_rejected_total{reason="too-large"} 2.0' in metrics


def test_tokens_speak_for_one_user_only(jwt_api, consul) -> None:
    with httpx.Client(base_url=jwt_api.url) as http:
        ada = {"Authorization": f"Bearer {token('ada')}"}
        created = http.post("/api/v1/requests", json={}, headers=ada)
        assert created.status_code == 200, created.text
        assert created.json()["id"] == "ada"
        before = kv_keys(consul)
        cases = {
            "missing": {},
            "forged": {"Authorization": f"Bearer {token('ada', secret=OTHER)}"},
            "expired": {"Authorization": f"Bearer {token('ada', expires_in=-60)}"},
            "garbage": {"Authorization": "Bearer not.a.jwt"},
            "wrong scheme": {"Authorization": f"Basic {token('ada')}"},
            "none alg": {
                "Authorization": "Bearer "
                + jwt.encode({"user_id": "ada"}, key=None, algorithm="none")  # type: ignore[arg-type]
            },
            "bad user id": {"Authorization": f"Bearer {token('../ada')}"},
        }
        for name, headers in cases.items():
            for method, path in (
                ("GET", "/api/v1/requests/ada"),
                ("DELETE", "/api/v1/requests/ada"),
                ("POST", "/api/v1/requests/ada/activity"),
                ("GET", "/api/v1/requests/ada/events"),
            ):
                answer = http.request(method, path, headers=headers)
                assert answer.status_code == 401, (name, method, path, answer.text)
                assert answer.json()["detail"]
        eve = {"Authorization": f"Bearer {token('eve')}"}
        for method, path in (
            ("GET", "/api/v1/requests/ada"),
            ("DELETE", "/api/v1/requests/ada"),
            ("POST", "/api/v1/requests/ada/activity"),
            ("GET", "/api/v1/requests/ada/events"),
        ):
            answer = http.request(method, path, headers=eve)
            assert answer.status_code == 403, (method, path, answer.text)
        spoof = http.post("/api/v1/requests", json={"id": "ada"}, headers=eve)
        assert spoof.status_code == 403
        expired = http.get(
            "/api/v1/requests/ada/events", params={"access_token": token("ada", expires_in=-60)}
        )
        assert expired.status_code == 401
        assert "expired" in expired.json()["detail"]
        assert http.get("/api/v1/requests/ada", headers=ada).json()["id"] == "ada"
    after = kv_keys(consul)
    assert after == before
    assert REQ + "ada" in after
