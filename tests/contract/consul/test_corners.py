"""Corners where an emulator most easily drifts from Consul: texts, headers and edge results.

Each assertion here comes from Consul's own source (agent/*_endpoint.go, agent/consul/state,
agent/checks/check.go), so it holds against a real agent too.
"""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# -- KV and transactions ---------------------------------------------------------------------


def test_missing_key_404_has_no_body_and_no_content_type(
    consul_http: httpx.Client, kv_prefix: str
) -> None:
    r = consul_http.get(f"/v1/kv/{kv_prefix}nothing-here")
    assert r.status_code == 404
    assert r.content == b""
    assert "Content-Type" not in r.headers
    assert int(r.headers["X-Consul-Index"]) >= 1
    assert r.headers["X-Consul-KnownLeader"] == "true"
    # KV reads do not record a consistency level (health and catalog reads do).
    assert "X-Consul-Effective-Consistency" not in r.headers


def test_get_or_empty_on_a_missing_key_returns_its_entry(
    consul_http: httpx.Client, kv_prefix: str
) -> None:
    key = kv_prefix + "absent"
    r = consul_http.put("/v1/txn", json=[{"KV": {"Verb": "get-or-empty", "Key": key}}])
    assert r.status_code == 200
    body = r.json()
    assert body["Errors"] is None
    assert body["Results"] == [
        {
            "KV": {
                "LockIndex": 0,
                "Key": key,
                "Flags": 0,
                "Value": None,
                "CreateIndex": 0,
                "ModifyIndex": 0,
            }
        }
    ]
    consul_http.put(f"/v1/kv/{key}", content=b"here")
    r = consul_http.put("/v1/txn", json=[{"KV": {"Verb": "get-or-empty", "Key": key}}])
    assert base64.b64decode(r.json()["Results"][0]["KV"]["Value"]) == b"here"


def test_read_only_txn_body_embeds_the_query_meta(
    consul_http: httpx.Client, kv_prefix: str
) -> None:
    # Consul returns a TxnReadResponse, whose embedded QueryMeta Go serialises too.
    r = consul_http.put("/v1/txn", json=[{"KV": {"Verb": "get-tree", "Key": kv_prefix}}])
    body = r.json()
    assert body["Results"] is None
    assert body["Errors"] is None
    assert body["KnownLeader"] is True
    assert body["Index"] == 0
    assert body["LastContact"] == 0
    assert body["ResultsFilteredByACLs"] is False
    r = consul_http.put(
        "/v1/txn", json=[{"KV": {"Verb": "set", "Key": kv_prefix + "w", "Value": _b64(b"1")}}]
    )
    assert set(r.json()) == {"Results", "Errors"}


_PARSE = "Failed to parse body: "
_TYPE = "json: cannot unmarshal "
BAD_TXN_BODIES = [
    (b"", "EOF"),
    (b"[{", "unexpected EOF"),
    (b"{x}", "invalid character 'x' looking for beginning of object key string"),
    (b"[1 2]", "invalid character '2' after array element"),
    (b"{}", _TYPE + "object into Go value of type api.TxnOps"),
    (
        b'[{"KV": {"Verb": "get", "Key": 7}}]',
        _TYPE + "number into Go struct field KVTxnOp.KV.Key of type string",
    ),
    (
        b'[{"KV": {"Verb": "set", "Key": "k", "Flags": -1}}]',
        _TYPE + "number -1 into Go struct field KVTxnOp.KV.Flags of type uint64",
    ),
    (b'[{"KV": {"Verb": "get", "Key": "k", "Colour": "red"}}]', 'json: unknown field "Colour"'),
    (
        b'[{"KV": {"Verb": "set", "Key": "k", "Value": "!!"}}]',
        "illegal base64 data at input byte 0",
    ),
]


@pytest.mark.parametrize(("body", "text"), BAD_TXN_BODIES)
def test_txn_bodies_are_decoded_as_go_decodes_them(
    consul_http: httpx.Client, body: bytes, text: str
) -> None:
    r = consul_http.put("/v1/txn", content=body)
    assert r.status_code == 400
    assert r.text == _PARSE + text


def test_txn_ignores_what_follows_the_first_json_value(
    consul_http: httpx.Client, kv_prefix: str
) -> None:
    ops = f'[{{"KV": {{"Verb": "get-or-empty", "Key": "{kv_prefix}k"}}}}] trailing junk'
    r = consul_http.put("/v1/txn", content=ops.encode())
    assert r.status_code == 200
    assert r.json()["Results"][0]["KV"]["Key"] == kv_prefix + "k"


def test_txn_lock_with_empty_session_is_refused(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.put("/v1/txn", json=[{"KV": {"Verb": "lock", "Key": kv_prefix + "l"}}])
    assert r.status_code == 409
    assert r.json()["Errors"] == [{"OpIndex": 0, "What": "missing session"}]
    r = consul_http.put("/v1/txn", json=[{"KV": {"Verb": "get-tree", "Key": ""}}])
    assert r.json()["Errors"] == [{"OpIndex": 0, "What": "Must provide key"}]


def test_kv_acquire_with_empty_session_is_a_500(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.put(f"/v1/kv/{kv_prefix}l", params={"acquire": ""}, content=b"v")
    assert r.status_code == 500
    assert r.text == "missing session"


def test_conflicting_flags_text(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.put(f"/v1/kv/{kv_prefix}c", params={"cas": "0", "release": "x"}, content=b"")
    assert r.status_code == 400
    assert r.text == "Conflicting flags: cas=0&release=x\n"


# -- datacenters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/v1/kv/some-key", {}),
        ("PUT", "/v1/kv/some-key", {"content": b"v"}),
        ("DELETE", "/v1/kv/some-key", {}),
        ("GET", "/v1/catalog/services", {}),
        ("GET", "/v1/health/service/consul", {}),
        ("PUT", "/v1/session/create", {}),
        ("GET", "/v1/session/list", {}),
        ("PUT", "/v1/txn", {"json": [{"KV": {"Verb": "get-or-empty", "Key": "k"}}]}),
        ("PUT", "/v1/txn", {"json": [{"KV": {"Verb": "set", "Key": "k", "Value": ""}}]}),
    ],
)
def test_unknown_datacenter_is_no_path(
    consul_http: httpx.Client, method: str, path: str, kwargs: dict[str, object]
) -> None:
    r = consul_http.request(method, path, params={"dc": "no-such-dc"}, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 500
    assert r.text == "No path to datacenter"


def test_unknown_datacenter_on_a_catalog_read_still_carries_meta(consul_http: httpx.Client) -> None:
    # The catalog handlers defer setMeta, so even the error has the (empty) query metadata.
    r = consul_http.get("/v1/catalog/nodes", params={"dc": "no-such-dc"})
    assert r.status_code == 500
    assert r.headers["X-Consul-Index"] == "1"
    assert r.headers["X-Consul-KnownLeader"] == "false"


def test_validation_comes_before_the_datacenter(consul_http: httpx.Client) -> None:
    r = consul_http.get("/v1/kv/", params={"dc": "no-such-dc"})
    assert r.status_code == 400
    assert r.text == "Missing key name"


def test_health_reads_record_their_consistency(consul_http: httpx.Client) -> None:
    r = consul_http.get("/v1/health/service/consul")
    assert r.headers["X-Consul-Effective-Consistency"] == "leader"
    r = consul_http.get("/v1/catalog/services", params={"stale": ""})
    assert r.headers["X-Consul-Effective-Consistency"] == "stale"
    r = consul_http.get("/v1/health/service/consul", params={"passing": "maybe"})
    assert r.status_code == 400
    assert r.text == "Invalid value for ?passing"


# -- agent -----------------------------------------------------------------------------------


@pytest.fixture
def service(consul_http: httpx.Client) -> Iterator[str]:
    name = f"corner-{uuid.uuid4().hex[:8]}"
    r = consul_http.put("/v1/agent/service/register", json={"Name": name, "Tags": ["a"]})
    assert r.status_code == 200
    yield name
    consul_http.put(f"/v1/agent/service/deregister/{name}")


def test_check_for_an_unknown_service_is_404(consul_http: httpx.Client) -> None:
    r = consul_http.put(
        "/v1/agent/check/register",
        json={"Name": "orphan", "ServiceID": "no-such-service", "TTL": "30s"},
    )
    assert r.status_code == 404
    assert r.text == 'ServiceID "no-such-service" does not exist'
    r = consul_http.put("/v1/agent/check/register", json={"Name": "x", "TTL": "1s", "Status": "ok"})
    assert r.status_code == 400
    assert r.text == "Bad check status"


def test_agent_service_carries_its_content_hash(consul_http: httpx.Client, service: str) -> None:
    r = consul_http.get(f"/v1/agent/service/{service}")
    assert r.status_code == 200
    digest = r.headers["X-Consul-ContentHash"]
    assert r.json()["ContentHash"] == digest
    assert digest
    # Same content, same hash.
    assert consul_http.get(f"/v1/agent/service/{service}").headers["X-Consul-ContentHash"] == digest
    r = consul_http.get("/v1/agent/service/no-such-service")
    assert r.status_code == 404
    assert r.text == "unknown service ID: no-such-service"


def test_hash_blocking_waits_for_a_change(
    consul_http: httpx.Client, consul_addr: str, service: str
) -> None:
    digest = consul_http.get(f"/v1/agent/service/{service}").headers["X-Consul-ContentHash"]
    # Another hash returns at once.
    started = time.monotonic()
    r = consul_http.get(f"/v1/agent/service/{service}", params={"hash": "other", "wait": "10s"})
    assert r.status_code == 200
    assert time.monotonic() - started < 5
    # The current hash blocks until the wait runs out, then answers the same hash.
    started = time.monotonic()
    r = consul_http.get(f"/v1/agent/service/{service}", params={"hash": digest, "wait": "1s"})
    assert time.monotonic() - started >= 0.9
    assert r.headers["X-Consul-ContentHash"] == digest
    # A change wakes it early, with the new hash.
    answers: list[httpx.Response] = []

    def watch() -> None:
        with httpx.Client(base_url=f"http://{consul_addr}", timeout=60) as c:
            answers.append(
                c.get(f"/v1/agent/service/{service}", params={"hash": digest, "wait": "30s"})
            )

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    consul_http.put("/v1/agent/service/register", json={"Name": service, "Tags": ["a", "b"]})
    thread.join(timeout=25)
    assert answers, "the blocking read did not return"
    assert answers[0].headers["X-Consul-ContentHash"] != digest
    assert answers[0].json()["Tags"] == ["a", "b"]


def test_bad_filter_is_a_500_with_the_evaluator_text(consul_http: httpx.Client) -> None:
    for path in ("/v1/agent/services", "/v1/catalog/nodes", "/v1/health/state/any"):
        r = consul_http.get(path, params={"filter": "Service =="})
        assert r.status_code == 500, path
        assert r.text.startswith("Failed to create boolean expression evaluator"), path


# -- check outputs ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_target() -> Iterator[int]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the target"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _output(http: httpx.Client, check_id: str, status: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check = http.get("/v1/agent/checks").json().get(check_id)
        if check and check["Status"] == status and check["Output"]:
            return str(check["Output"])
        time.sleep(0.2)
    raise AssertionError(f"{check_id} never reached {status}")


@pytest.fixture
def checks(consul_http: httpx.Client) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for cid in created:
        consul_http.put(f"/v1/agent/check/deregister/{cid}")


def _register(http: httpx.Client, checks: list[str], **definition: object) -> str:
    cid = f"out-{uuid.uuid4().hex[:8]}"
    r = http.put("/v1/agent/check/register", json={"ID": cid, "Name": cid, **definition})
    assert r.status_code == 200, r.text
    checks.append(cid)
    return cid


def test_http_check_outputs_read_like_consuls(
    consul_http: httpx.Client, checks: list[str], http_target: int
) -> None:
    url = f"http://127.0.0.1:{http_target}/health"
    cid = _register(consul_http, checks, HTTP=url, Interval="1s")
    assert _output(consul_http, cid, "passing") == (
        f"HTTP GET {url}: 200 OK Output: hello from the target"
    )
    dead = f"http://127.0.0.1:{_free_port()}/health"
    cid = _register(consul_http, checks, HTTP=dead, Interval="1s")
    port = dead.rsplit(":", 1)[1].split("/")[0]
    assert _output(consul_http, cid, "critical") == (
        f'Get "{dead}": dial tcp 127.0.0.1:{port}: connect: connection refused'
    )


def test_tcp_check_outputs_read_like_consuls(
    consul_http: httpx.Client, checks: list[str], http_target: int
) -> None:
    cid = _register(consul_http, checks, TCP=f"127.0.0.1:{http_target}", Interval="1s")
    assert _output(consul_http, cid, "passing") == f"TCP connect 127.0.0.1:{http_target}: Success"
    port = _free_port()
    cid = _register(consul_http, checks, TCP=f"127.0.0.1:{port}", Interval="1s")
    assert _output(consul_http, cid, "critical") == (
        f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    )
