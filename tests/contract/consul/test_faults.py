"""Emulator-only: faults on demand through the Python handle and the admin API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import consul
import httpx
import pytest

from devstack.consul import ConsulServer, start_consul
from devstack.consul.testing import py_consul, requires_embedded

pytestmark = requires_embedded


@pytest.fixture
def http(consul_server: ConsulServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=consul_server.url, timeout=10) as client:
        yield client


def test_fresh_instance_is_fast() -> None:
    started = time.monotonic()
    server = start_consul()
    try:
        assert httpx.get(f"{server.url}/v1/status/leader").status_code == 200
    finally:
        server.stop()
    assert time.monotonic() - started < 1.0


def test_latency(consul_server: ConsulServer, http: httpx.Client) -> None:
    consul_server.set_faults(latency_ms=200)
    started = time.monotonic()
    assert http.get("/v1/status/leader").status_code == 200
    assert time.monotonic() - started >= 0.2
    consul_server.clear_faults()
    started = time.monotonic()
    http.get("/v1/status/leader")
    assert time.monotonic() - started < 0.2


def test_error_rate(consul_server: ConsulServer, http: httpx.Client) -> None:
    consul_server.set_faults(error_rate=1.0)
    r = http.put("/v1/kv/x", content=b"v")
    assert r.status_code == 500
    with (
        py_consul(consul_server.address) as c,
        pytest.raises(consul.ConsulException),
    ):
        c.kv.get("x")
    consul_server.set_faults(error_rate=0.0)
    assert http.put("/v1/kv/x", content=b"v").status_code == 200


def test_drop_closes_connection_without_response(
    consul_server: ConsulServer, http: httpx.Client
) -> None:
    consul_server.set_faults(drop_rate=1.0, path_prefix="/v1/kv/")
    with pytest.raises(httpx.TransportError):
        http.get("/v1/kv/x")
    # other paths are untouched
    assert http.get("/v1/status/leader").status_code == 200
    consul_server.clear_faults()
    assert http.get("/v1/kv/x").status_code == 404


def test_no_leader(consul_server: ConsulServer, http: httpx.Client) -> None:
    http.put("/v1/kv/k", content=b"v")
    with consul_server.no_leader():
        r = http.get("/v1/kv/k")
        assert r.status_code == 500
        assert r.text == "No cluster leader"
        assert r.headers["X-Consul-KnownLeader"] == "false"
        assert http.put("/v1/kv/k", content=b"w").status_code == 500
        stale = http.get("/v1/kv/k", params={"stale": ""})
        assert stale.status_code == 200
        assert stale.headers["X-Consul-KnownLeader"] == "false"
        assert http.get("/v1/status/leader").json() == ""
    assert http.get("/v1/status/leader").json() != ""
    assert http.get("/v1/kv/k").headers["X-Consul-KnownLeader"] == "true"


def test_index_reset_goes_backwards_and_wakes_watchers(
    consul_server: ConsulServer, http: httpx.Client
) -> None:
    for i in range(20):
        http.put(f"/v1/kv/r/{i}", content=b"v")
    r = http.get("/v1/kv/r/", params={"recurse": ""})
    idx = int(r.headers["X-Consul-Index"])
    results: list[int] = []

    def watch() -> None:
        with httpx.Client(base_url=consul_server.url, timeout=10) as c:
            w = c.get("/v1/kv/r/", params={"recurse": "", "index": idx, "wait": "5s"})
            results.append(int(w.headers["X-Consul-Index"]))

    t = threading.Thread(target=watch)
    t.start()
    # Reset only once the query is parked, or it would park afterwards and wait out its 5 s.
    deadline = time.monotonic() + 10
    while consul_server.stats()["BlockingQueries"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    new = consul_server.reset_index(5)
    t.join()
    assert new == 5
    assert time.monotonic() - started < 2
    assert results[0] < idx
    after = http.get("/v1/kv/r/", params={"recurse": ""})
    assert int(after.headers["X-Consul-Index"]) <= 5
    # writes continue from the restored index
    http.put("/v1/kv/r/new", content=b"v")
    assert http.get("/v1/kv/r/new").json()[0]["ModifyIndex"] == 6


def test_force_session_expiry(consul_server: ConsulServer, http: httpx.Client) -> None:
    sid = http.put("/v1/session/create", json={"TTL": "60s", "LockDelay": "1s"}).json()["ID"]
    assert http.put("/v1/kv/leader", params={"acquire": sid}, content=b"me").text == "true"
    assert consul_server.expire_session(sid) is True
    assert http.get(f"/v1/session/info/{sid}").json() == []
    assert "Session" not in http.get("/v1/kv/leader").json()[0]
    other = http.put("/v1/session/create", json={"LockDelay": "0s"}).json()["ID"]
    # expiry, unlike a release, starts the lock-delay
    assert http.put("/v1/kv/leader", params={"acquire": other}, content=b"x").text == "false"
    assert consul_server.expire_session(sid) is False


def test_force_check_critical(consul_server: ConsulServer, http: httpx.Client) -> None:
    http.put(
        "/v1/agent/service/register",
        json={"Name": "web", "Check": {"TTL": "60s", "Status": "passing"}},
    )
    sid = http.put(
        "/v1/session/create",
        json={"ServiceChecks": [{"ID": "service:web"}], "NodeChecks": [], "LockDelay": "0s"},
    ).json()["ID"]
    assert consul_server.force_check("service:web") is True
    assert http.get("/v1/agent/checks").json()["service:web"]["Status"] == "critical"
    assert http.get("/v1/session/info/" + sid).json() == []
    # failing the node's serfHealth kills default sessions, as a failed agent does
    s2 = http.put("/v1/session/create").json()["ID"]
    assert consul_server.force_check("serfHealth") is True
    assert http.get("/v1/session/info/" + s2).json() == []
    assert consul_server.force_check("no-such-check") is False


def test_admin_api(consul_server: ConsulServer, http: httpx.Client) -> None:
    r = http.put("/_devstack/faults", json={"error_rate": 1.0, "path_prefix": "/v1/kv/"})
    assert r.json()["error_rate"] == 1.0
    assert http.get("/v1/kv/a").status_code == 500
    assert http.get("/_devstack/faults").json()["error_rate"] == 1.0
    http.delete("/_devstack/faults")
    assert http.get("/v1/kv/a").status_code == 404
    assert http.put("/_devstack/faults", json={"bogus": 1}).status_code == 400
    assert http.put("/_devstack/faults", json={"error_rate": 7}).status_code == 400
    sid = http.put("/v1/session/create").json()["ID"]
    assert http.put(f"/_devstack/session/{sid}/expire").status_code == 200
    assert http.put(f"/_devstack/session/{sid}/expire").status_code == 404
    assert http.put("/_devstack/check/serfHealth/force", json={"Status": "critical"}).json()
    assert http.put("/_devstack/check/serfHealth/force", json={"Status": "passing"}).json()
    assert http.put("/_devstack/index-reset", params={"to": "2"}).json() == {"Index": 2}
    stats = http.get("/_devstack/stats").json()
    assert stats["Index"] == 2
    with consul_server.no_leader():
        # the admin API is never disturbed
        assert http.get("/_devstack/stats").status_code == 200


def test_hostile_input_never_crashes(http: httpx.Client) -> None:
    # Go's decoder reads the first JSON value only: trailing bytes are ignored, null is an
    # empty struct (so the RPC's own validation answers), a syntax error is 400.
    expected = {
        b"\xff\xfe": (400, 400, 400, 400),
        b"[1,2": (400, 400, 400, 400),
        b'"str"': (400, 400, 400, 400),
        b"null": (200, 200, 400, 500),
        b"{}" * 1000: (200, 400, 400, 500),
    }
    for body, (session, txn, service, catalog) in expected.items():
        assert http.put("/v1/session/create", content=body).status_code == session, body
        assert http.put("/v1/txn", content=body).status_code == txn, body
        assert http.put("/v1/agent/service/register", content=body).status_code == service
        assert http.put("/v1/catalog/register", content=body).status_code == catalog, body
    assert http.put("/v1/kv/%00evil", content=b"v").status_code == 400
    r = http.get("/v1/agent/services", params={"filter": "Service =="})
    # A filter that does not parse is an error of the query, which Consul answers with 500.
    assert r.status_code == 500
    assert r.text.startswith("Failed to create boolean expression evaluator")
    assert http.get("/v1/status/leader").status_code == 200


def test_acl_master_token_embedded() -> None:
    with ConsulServer(acl_master_token="root") as server:
        with (
            py_consul(server.address) as c,
            pytest.raises(consul.ACLPermissionDenied),
        ):
            c.kv.put("x", "1")
        with py_consul(server.address, "root") as root:
            assert root.kv.put("x", "1") is True


def test_cli_foreground_ready_line_and_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "devstack.consul", "--port", "0", "--node", "cli-node"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "ready on http://127.0.0.1:" in line
            url = line.strip().rsplit(" ", 1)[-1]
            self_ = httpx.get(f"{url}/v1/agent/self").json()
            assert self_["Config"]["NodeName"] == "cli-node"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert "stopped" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cli_refuses_non_loopback_bind() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "devstack.consul", "--port", "0", "--bind", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "loopback" in proc.stderr


def test_admin_api_needs_the_management_token_when_acls_are_on() -> None:
    with ConsulServer(acl_master_token="root") as server:
        calls = [
            ("GET", "/_devstack/faults", None),
            ("PUT", "/_devstack/faults", {"latency_ms": 0}),
            ("DELETE", "/_devstack/faults", None),
            ("PUT", "/_devstack/index-reset", None),
            ("PUT", f"/_devstack/session/{uuid.uuid4()}/expire", None),
            ("PUT", "/_devstack/check/serfHealth/force", {"Status": "passing"}),
            ("GET", "/_devstack/stats", None),
        ]
        with httpx.Client(base_url=server.url, timeout=10) as http:
            policy = http.put(
                "/v1/acl/policy",
                json={"Name": "kv-only", "Rules": 'key_prefix "" { policy = "write" }'},
                headers={"X-Consul-Token": "root"},
            ).json()
            token = http.put(
                "/v1/acl/token",
                json={"Policies": [{"ID": policy["ID"]}]},
                headers={"X-Consul-Token": "root"},
            ).json()["SecretID"]
            for method, path, body in calls:
                for headers in ({}, {"X-Consul-Token": token}):
                    r = http.request(method, path, json=body, headers=headers)
                    assert r.status_code == 403, (method, path)
                    assert "needs the management token" in r.text
                r = http.request(method, path, json=body, headers={"X-Consul-Token": "nope"})
                assert (r.status_code, r.text) == (403, "ACL not found")
                r = http.request(method, path, json=body, params={"token": "root"})
                assert r.status_code in (200, 404), (method, path, r.text)
            assert http.get("/_devstack/stats", headers={"Authorization": "Bearer root"}).json()
        # The Python handle is the test's own and needs no token.
        assert server.stats()["Index"] >= 1


def test_admin_paths_only_take_their_own_shape(http: httpx.Client) -> None:
    sid = http.put("/v1/session/create").json()["ID"]
    assert http.put(f"/_devstack/session/{sid}").status_code == 404
    assert http.put(f"/_devstack/session/{sid}/expire/x").status_code == 404
    assert http.put(f"/_devstack/session/{sid}/expire").status_code == 200
    assert http.get("/_devstack/nothing").status_code == 404
