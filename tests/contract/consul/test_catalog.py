"""Catalog, health and agent endpoints, with checks that are really executed."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from packaging import version


@pytest.fixture
def svc_name() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cleanup(consul_http: httpx.Client) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for sid in ids:
        consul_http.put(f"/v1/agent/service/deregister/{sid}")


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_target() -> Iterator[tuple[ThreadingHTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _check_status(http: httpx.Client, check_id: str) -> str | None:
    checks = http.get("/v1/agent/checks").json()
    return checks.get(check_id, {}).get("Status")


def test_baseline_of_a_fresh_agent(consul_http: httpx.Client) -> None:
    services = consul_http.get("/v1/catalog/services")
    assert services.status_code == 200
    assert "consul" in services.json()
    assert int(services.headers["X-Consul-Index"]) >= 1
    assert consul_http.get("/v1/catalog/datacenters").json() == ["dc1"]
    node = consul_http.get("/v1/agent/self").json()["Config"]["NodeName"]
    checks = consul_http.get(f"/v1/health/node/{node}").json()
    serf = next(c for c in checks if c["CheckID"] == "serfHealth")
    assert serf["Name"] == "Serf Health Status"
    assert serf["Status"] == "passing"
    assert "serfHealth" not in consul_http.get("/v1/agent/checks").json()


def test_agent_self_and_status(consul_http: httpx.Client) -> None:
    body = consul_http.get("/v1/agent/self").json()
    assert {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"} <= set(body)
    version.parse(body["Config"]["Version"])
    leader = consul_http.get("/v1/status/leader").json()
    assert leader
    assert body["Stats"]["consul"]["leader_addr"] == leader
    assert all(isinstance(v, str) for group in body["Stats"].values() for v in group.values())
    assert leader in consul_http.get("/v1/status/peers").json()


def test_register_service_shape(
    consul_client, consul_http: httpx.Client, svc_name: str, cleanup: list[str]
) -> None:
    cleanup.append(svc_name)
    consul_client.agent.service.register(svc_name)
    services = consul_http.get("/v1/agent/services").json()
    assert services[svc_name] == {
        "ID": svc_name,
        "Service": svc_name,
        "Tags": [],
        "Meta": {},
        "Port": 0,
        "Address": "",
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
        "Datacenter": "dc1",
    }
    catalog = consul_http.get(f"/v1/catalog/service/{svc_name}").json()
    assert [e["ServiceID"] for e in catalog] == [svc_name]
    assert consul_client.agent.service.deregister(svc_name) is True
    assert consul_client.agent.service.deregister(svc_name) is False
    r = consul_http.put(f"/v1/agent/service/deregister/{svc_name}")
    assert r.status_code == 404
    assert r.text.startswith(f'Unknown service ID "{svc_name}"')


def test_register_validation(consul_http: httpx.Client) -> None:
    assert consul_http.put("/v1/agent/service/register", json={}).status_code == 400
    assert consul_http.put("/v1/agent/service/register", content=b"{oops").status_code == 400
    r = consul_http.put(
        "/v1/agent/service/register", json={"Name": "x", "Check": {"TTL": "10s", "Status": "meh"}}
    )
    assert r.status_code == 400


def test_ttl_check_lifecycle(consul_http: httpx.Client, svc_name: str, cleanup: list[str]) -> None:
    cleanup.append(svc_name)
    r = consul_http.put(
        "/v1/agent/service/register",
        json={"Name": svc_name, "Port": 8080, "Tags": ["v1"], "Check": {"TTL": "30s"}},
    )
    assert r.status_code == 200
    assert r.content == b""
    check_id = f"service:{svc_name}"
    assert _check_status(consul_http, check_id) == "critical"
    assert consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": ""}).json() == []
    consul_http.put(f"/v1/agent/check/pass/{check_id}", params={"note": "all good"})
    checks = consul_http.get("/v1/agent/checks").json()
    assert checks[check_id]["Status"] == "passing"
    assert checks[check_id]["Output"] == "all good"
    healthy = consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": ""}).json()
    assert [e["Service"]["ID"] for e in healthy] == [svc_name]
    entry = healthy[0]
    assert entry["Service"]["Port"] == 8080
    assert {c["CheckID"] for c in entry["Checks"]} == {"serfHealth", check_id}
    consul_http.put(f"/v1/agent/check/warn/{check_id}")
    assert consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": ""}).json() == []
    r = consul_http.put(
        f"/v1/agent/check/update/{check_id}", json={"Status": "passing", "Output": "fine"}
    )
    assert r.status_code == 200
    assert _check_status(consul_http, check_id) == "passing"
    assert consul_http.put("/v1/agent/check/pass/no-such-check").status_code == 404


def test_multiple_checks_ids_and_names(
    consul_http: httpx.Client, svc_name: str, cleanup: list[str]
) -> None:
    cleanup.append(svc_name)
    consul_http.put(
        "/v1/agent/service/register",
        json={"Name": svc_name, "Checks": [{"TTL": "30s"}, {"TTL": "30s"}]},
    )
    checks = consul_http.get("/v1/agent/checks").json()
    assert checks[f"service:{svc_name}:1"]["Name"] == f"Service '{svc_name}' check"
    assert f"service:{svc_name}:2" in checks
    consul_http.put(f"/v1/agent/service/deregister/{svc_name}")
    assert f"service:{svc_name}:1" not in consul_http.get("/v1/agent/checks").json()


def test_http_check_is_executed(
    consul_http: httpx.Client, svc_name: str, cleanup: list[str], http_target
) -> None:
    server, handler = http_target
    url = f"http://127.0.0.1:{server.server_address[1]}/health"
    cleanup.append(svc_name)
    consul_http.put(
        "/v1/agent/service/register",
        json={"Name": svc_name, "Check": {"HTTP": url, "Interval": "1s", "Timeout": "1s"}},
    )
    check_id = f"service:{svc_name}"
    _wait_for(lambda: _check_status(consul_http, check_id) == "passing")
    output = consul_http.get("/v1/agent/checks").json()[check_id]["Output"]
    assert output.startswith(f"HTTP GET {url}: 200 OK")
    handler.status = 503
    _wait_for(lambda: _check_status(consul_http, check_id) == "critical", timeout=15)
    handler.status = 429
    _wait_for(lambda: _check_status(consul_http, check_id) == "warning", timeout=15)


def test_tcp_check_is_executed(
    consul_http: httpx.Client, svc_name: str, cleanup: list[str]
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    cleanup.append(svc_name)
    try:
        consul_http.put(
            "/v1/agent/service/register",
            json={
                "Name": svc_name,
                "Port": port,
                "Check": {"TCP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "1s"},
            },
        )
        check_id = f"service:{svc_name}"
        _wait_for(lambda: _check_status(consul_http, check_id) == "passing")
    finally:
        listener.close()
    _wait_for(lambda: _check_status(consul_http, check_id) == "critical", timeout=15)


def test_nomad_style_registration(
    consul_http: httpx.Client, svc_name: str, cleanup: list[str], http_target
) -> None:
    server, _ = http_target
    port = server.server_address[1]
    alloc = str(uuid.uuid4())
    sid = f"_nomad-task-{alloc}-web-{svc_name}-http"
    cleanup.append(sid)
    body = {
        "ID": sid,
        "Name": svc_name,
        "Tags": ["user-1"],
        "Port": port,
        "Address": "127.0.0.1",
        "Meta": {"external-source": "nomad"},
        "Checks": [
            {
                "CheckID": f"_nomad-check-{uuid.uuid4().hex}",
                "Name": "service: http check",
                "HTTP": f"http://127.0.0.1:{port}/health",
                "Interval": "1s",
                "Timeout": "2s",
            }
        ],
    }
    r = consul_http.put(
        "/v1/agent/service/register", params={"replace-existing-checks": "true"}, json=body
    )
    assert r.status_code == 200
    healthy = _wait_for(
        lambda: consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": "1"}).json()
    )
    assert healthy[0]["Service"]["ID"] == sid
    assert healthy[0]["Service"]["Meta"] == {"external-source": "nomad"}
    assert healthy[0]["Service"]["Address"] == "127.0.0.1"
    # Nomad's sync loop re-registers: an identical registration must not move the index
    idx = consul_http.get(f"/v1/health/service/{svc_name}").headers["X-Consul-Index"]
    consul_http.put(
        "/v1/agent/service/register", params={"replace-existing-checks": "true"}, json=body
    )
    after = consul_http.get(f"/v1/health/service/{svc_name}")
    assert after.headers["X-Consul-Index"] == idx
    assert after.json()[0]["Checks"][-1]["Status"] == "passing"
    filtered = consul_http.get(
        "/v1/agent/services", params={"filter": 'Meta["external-source"] == "nomad"'}
    ).json()
    assert sid in filtered


def test_tags_and_catalog_services(
    consul_http: httpx.Client, svc_name: str, cleanup: list[str]
) -> None:
    for i, tags in enumerate((["prod", "v1"], ["v2"])):
        sid = f"{svc_name}-{i}"
        cleanup.append(sid)
        consul_http.put(
            "/v1/agent/service/register",
            json={"ID": sid, "Name": svc_name, "Tags": tags, "Check": {"TTL": "30s"}},
        )
    assert sorted(consul_http.get("/v1/catalog/services").json()[svc_name]) == ["prod", "v1", "v2"]
    tagged = consul_http.get(f"/v1/catalog/service/{svc_name}", params={"tag": "v2"}).json()
    assert [e["ServiceID"] for e in tagged] == [f"{svc_name}-1"]
    health = consul_http.get(f"/v1/health/service/{svc_name}", params={"tag": "prod"}).json()
    assert [e["Service"]["ID"] for e in health] == [f"{svc_name}-0"]
    checks = consul_http.get(f"/v1/health/checks/{svc_name}").json()
    assert sorted(c["ServiceID"] for c in checks) == [f"{svc_name}-0", f"{svc_name}-1"]
    critical = consul_http.get("/v1/health/state/critical").json()
    assert {f"service:{svc_name}-0", f"service:{svc_name}-1"} <= {c["CheckID"] for c in critical}
    # Health.ChecksInState does not validate the state: an unknown one matches no check.
    bogus = consul_http.get("/v1/health/state/bogus")
    assert bogus.status_code == 200
    assert bogus.json() == []
    assert consul_http.get("/v1/health/service/unknown-svc-xyz").json() == []
    assert consul_http.get("/v1/catalog/service/unknown-svc-xyz").json() == []


def test_health_blocking_wakes_on_check_change(
    consul_http: httpx.Client, consul_addr: str, svc_name: str, cleanup: list[str]
) -> None:
    cleanup.append(svc_name)
    consul_http.put("/v1/agent/service/register", json={"Name": svc_name, "Check": {"TTL": "30s"}})
    r = consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": ""})
    idx = int(r.headers["X-Consul-Index"])

    def flip() -> None:
        time.sleep(0.2)
        with httpx.Client(base_url=f"http://{consul_addr}", headers=consul_http.headers) as c:
            c.put(f"/v1/agent/check/pass/service:{svc_name}")

    t = threading.Thread(target=flip)
    t.start()
    r = consul_http.get(
        f"/v1/health/service/{svc_name}", params={"passing": "", "index": idx, "wait": "5s"}
    )
    t.join()
    assert int(r.headers["X-Consul-Index"]) > idx
    assert len(r.json()) == 1


def test_catalog_register_and_deregister(consul_http: httpx.Client, svc_name: str) -> None:
    node = f"{svc_name}-node"
    r = consul_http.put(
        "/v1/catalog/register",
        json={
            "Node": node,
            "Address": "10.1.2.3",
            "Service": {"Service": svc_name, "Port": 9000},
            "Check": {
                "CheckID": "ext",
                "Name": "external",
                "Status": "passing",
                "ServiceID": svc_name,
            },
        },
    )
    assert r.status_code == 200
    assert r.json() is True
    assert node in [n["Node"] for n in consul_http.get("/v1/catalog/nodes").json()]
    detail = consul_http.get(f"/v1/catalog/node/{node}").json()
    assert detail["Node"]["Address"] == "10.1.2.3"
    assert svc_name in detail["Services"]
    healthy = consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": ""}).json()
    assert healthy[0]["Node"]["Node"] == node
    consul_http.put("/v1/catalog/deregister", json={"Node": node})
    assert consul_http.get(f"/v1/catalog/node/{node}").json() is None
    assert consul_http.get(f"/v1/catalog/service/{svc_name}").json() == []
    # Catalog.Register validates in the RPC, so a missing node is a 500 with its text.
    r = consul_http.put("/v1/catalog/register", json={"Address": "1.2.3.4"})
    assert r.status_code == 500
    assert r.text == "Must provide node"


def test_maintenance_mode(consul_http: httpx.Client, svc_name: str, cleanup: list[str]) -> None:
    cleanup.append(svc_name)
    consul_http.put(
        "/v1/agent/service/register",
        json={"Name": svc_name, "Check": {"TTL": "30s", "Status": "passing"}},
    )
    consul_http.put(
        f"/v1/agent/service/maintenance/{svc_name}", params={"enable": "true", "reason": "deploy"}
    )
    checks = consul_http.get("/v1/agent/checks").json()
    maint = checks[f"_service_maintenance:{svc_name}"]
    assert maint["Status"] == "critical"
    assert maint["Notes"] == "deploy"
    assert consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": ""}).json() == []
    consul_http.put(f"/v1/agent/service/maintenance/{svc_name}", params={"enable": "false"})
    assert consul_http.get(f"/v1/health/service/{svc_name}", params={"passing": ""}).json()


def test_node_meta_filters(consul_http: httpx.Client) -> None:
    """``node-meta=key:value`` (repeatable) keeps what runs on nodes with all those pairs."""
    tag = uuid.uuid4().hex[:8]
    node, svc = f"meta-node-{tag}", f"meta-svc-{tag}"
    r = consul_http.put(
        "/v1/catalog/register",
        json={
            "Node": node,
            "Address": "192.0.2.10",
            "NodeMeta": {"rack": f"r-{tag}", "zone": "a"},
            "Service": {"Service": svc, "Port": 80},
        },
    )
    assert r.status_code == 200, r.text
    try:
        match = {"node-meta": [f"rack:r-{tag}", "zone:a"]}
        miss = {"node-meta": [f"rack:r-{tag}", "zone:b"]}
        nodes = consul_http.get("/v1/catalog/nodes", params=match).json()
        assert [n["Node"] for n in nodes] == [node]
        assert consul_http.get("/v1/catalog/nodes", params=miss).json() == []
        services = consul_http.get("/v1/catalog/services", params=match).json()
        assert services == {svc: []}
        assert consul_http.get("/v1/catalog/services", params=miss).json() == {}
        r = consul_http.get(f"/v1/catalog/service/{svc}", params=match)
        assert [s["Node"] for s in r.json()] == [node]
        assert consul_http.get(f"/v1/catalog/service/{svc}", params=miss).json() == []
        r = consul_http.get(f"/v1/health/service/{svc}", params=match)
        assert [e["Node"]["Node"] for e in r.json()] == [node]
        assert consul_http.get(f"/v1/health/service/{svc}", params=miss).json() == []
    finally:
        consul_http.put("/v1/catalog/deregister", json={"Node": node})


def test_a_node_s_services_can_be_filtered(consul_http: httpx.Client) -> None:
    """``/v1/catalog/node/:node?filter=`` selects among the node's services; the node stays."""
    node = f"filtered-{uuid.uuid4().hex[:8]}"
    try:
        for name, port in (("alpha", 1), ("beta", 2), ("gamma", 3)):
            r = consul_http.put(
                "/v1/catalog/register",
                json={
                    "Node": node,
                    "Address": "10.1.2.4",
                    "Service": {"ID": f"{node}-{name}", "Service": f"{node}-{name}", "Port": port},
                },
            )
            assert r.status_code == 200, r.text
        wanted = f'Service == "{node}-alpha" or Service == "{node}-gamma"'
        detail = consul_http.get(f"/v1/catalog/node/{node}", params={"filter": wanted}).json()
        assert detail["Node"]["Node"] == node
        assert sorted(detail["Services"]) == [f"{node}-alpha", f"{node}-gamma"]
        assert detail["Services"][f"{node}-gamma"]["Port"] == 3
        none = consul_http.get(f"/v1/catalog/node/{node}", params={"filter": "Port == 100"}).json()
        assert none["Services"] == {}
        for target in (node, "no-such-node"):
            bad = consul_http.get(f"/v1/catalog/node/{target}", params={"filter": "Port =="})
            assert bad.status_code == 500
            assert bad.text.startswith("Failed to create boolean expression evaluator")
    finally:
        consul_http.put("/v1/catalog/deregister", json={"Node": node})
