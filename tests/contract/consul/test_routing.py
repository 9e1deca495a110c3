"""Routing as a Consul agent routes: unknown paths, wrong methods, redirects, common headers.

No path the emulator does not serve may reach another endpoint's behaviour: an unknown path gets
the agent's 404 and its hint, a wrong method on a known endpoint a 405 with ``Allow``, and the
Go mux's redirects (a subtree root without its slash, an unclean path) happen as they do there.
"""

from __future__ import annotations

import gzip
import json
import socket

import httpx
import pytest

from devstack.consul.testing import requires_embedded

API_HINT = "Invalid URL path: not a recognized HTTP API endpoint\n"
PREFIX_HINT = (
    "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/bogus",
        "/v1/kvx/a",
        "/v1/agent/services/extra",
        "/v1/catalog/services/web",
        "/v1/status/leader/x",
        "/v1/txn/extra",
        "/v1/session/list/x",
        "/v1/agent/checks/x",
    ],
)
def test_unknown_api_path_is_the_agents_404(consul_http: httpx.Client, path: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        r = consul_http.request(method, path)
        assert r.status_code == 404, (method, path)
        assert r.text == API_HINT
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert "X-Consul-Index" not in r.headers


def test_path_outside_v1_gets_the_prefix_hint(consul_http: httpx.Client) -> None:
    for path in ("/kv/a", "/ui/", "/v2/kv/a"):
        r = consul_http.get(path)
        assert r.status_code == 404
        assert r.text == PREFIX_HINT


@pytest.mark.parametrize(
    ("path", "method", "allow"),
    [
        ("/v1/kv/some/key", "POST", "OPTIONS,GET,PUT,DELETE"),
        ("/v1/kv/some/key", "PATCH", "OPTIONS,GET,PUT,DELETE"),
        ("/v1/txn", "GET", "OPTIONS,PUT"),
        ("/v1/txn", "POST", "OPTIONS,PUT"),
        ("/v1/session/create", "GET", "OPTIONS,PUT"),
        ("/v1/session/list", "PUT", "OPTIONS,GET"),
        ("/v1/agent/service/register", "GET", "OPTIONS,PUT"),
        ("/v1/agent/service/web", "PUT", "OPTIONS,GET"),
        ("/v1/catalog/services", "DELETE", "OPTIONS,GET"),
        ("/v1/status/leader", "PUT", "OPTIONS,GET"),
        ("/v1/health/service/web", "HEAD", "OPTIONS,GET"),
        ("/v1/acl/token/self", "PUT", "OPTIONS,GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    consul_http: httpx.Client, path: str, method: str, allow: str
) -> None:
    r = consul_http.request(method, path)
    assert r.status_code == 405
    assert r.headers["Allow"] == allow
    if method != "HEAD":
        assert r.text == f"method {method} not allowed"


def test_options_lists_the_methods(consul_http: httpx.Client) -> None:
    r = consul_http.options("/v1/kv/anything")
    assert r.status_code == 200
    assert r.headers["Allow"] == "OPTIONS,GET,PUT,DELETE"
    assert r.content == b""


def test_subtree_root_without_slash_is_redirected(consul_http: httpx.Client) -> None:
    r = consul_http.get("/v1/kv", params={"recurse": ""})
    assert r.status_code == 301
    assert r.headers["Location"] == "/v1/kv/?recurse="
    r = consul_http.put("/v1/session/destroy", content=b"")
    assert r.status_code == 301
    assert r.headers["Location"] == "/v1/session/destroy/"


def test_unclean_paths_are_redirected_to_the_clean_one(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    # httpx would clean these itself, so they go over a raw socket.
    host, port = consul_addr.rsplit(":", 1)
    for raw, target in (
        (f"/v1/kv/{kv_prefix}a//b", f"/v1/kv/{kv_prefix}a/b"),
        (f"/v1/kv/{kv_prefix}./c", f"/v1/kv/{kv_prefix}c"),
        ("/v1//status/leader", "/v1/status/leader"),
    ):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"GET {raw} HTTP/1.1\r\nHost: consul\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        assert head[0].split(" ")[1] == "301", raw
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        assert headers["location"] == target
    assert consul_http.get(f"/v1/kv/{kv_prefix}a/b").status_code == 404


def test_ids_after_a_subtree_pattern_keep_their_slashes(consul_http: httpx.Client) -> None:
    # The handler reads the whole rest of the path: a name with a slash is that name.
    assert consul_http.get("/v1/catalog/service/no/such/service").json() == []
    assert consul_http.get("/v1/health/service/no/such/service").json() == []
    r = consul_http.put("/v1/session/destroy/")
    assert r.status_code == 400
    assert r.text == "Missing session"
    r = consul_http.get("/v1/catalog/service/")
    assert r.status_code == 400
    assert r.text == "Missing service name"
    r = consul_http.get("/v1/health/state/")
    assert r.status_code == 400
    assert r.text == "Missing check state"


def test_non_printable_path_is_refused_before_routing(consul_http: httpx.Client) -> None:
    for path in ("/v1/kv/a%00b", "/v1/bogus%07", "/v1/status/leader%0A"):
        r = consul_http.get(path)
        assert r.status_code == 400
        assert r.content == b""


def test_endpoint_responses_carry_vary_and_the_default_policy(
    consul_http: httpx.Client, kv_prefix: str
) -> None:
    r = consul_http.get("/v1/status/leader")
    assert r.headers["Vary"] == "Accept-Encoding"
    assert r.headers["X-Consul-Default-ACL-Policy"] in ("allow", "deny")
    r = consul_http.get(f"/v1/kv/{kv_prefix}missing")
    assert r.headers["Vary"] == "Accept-Encoding"
    # The agent's catch-all handler is not wrapped: no Vary there.
    assert "Vary" not in consul_http.get("/v1/bogus").headers


def test_large_bodies_are_gzipped_for_clients_that_accept_it(
    consul_http: httpx.Client, kv_prefix: str
) -> None:
    for i in range(40):
        consul_http.put(f"/v1/kv/{kv_prefix}big/{i:02d}", content=b"x" * 100)
    url = f"/v1/kv/{kv_prefix}big/"
    zipped = consul_http.get(url, params={"recurse": ""}, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert len(zipped.json()) == 40  # httpx inflates it
    plain = consul_http.get(url, params={"recurse": ""}, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert plain.json() == zipped.json()
    small = consul_http.get("/v1/status/leader", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers


def test_gzip_body_on_the_wire_is_real_gzip(consul_addr: str, kv_prefix: str) -> None:
    with httpx.Client(base_url=f"http://{consul_addr}") as client:
        for i in range(80):
            client.put(f"/v1/kv/{kv_prefix}z/{i:02d}", content=b"y")
        with client.stream(
            "GET", f"/v1/kv/{kv_prefix}z/", params={"keys": ""}, headers={"Accept-Encoding": "gzip"}
        ) as r:
            raw = b"".join(r.iter_raw())
    assert json.loads(gzip.decompress(raw)) == [f"{kv_prefix}z/{i:02d}" for i in range(80)]


@requires_embedded
def test_the_devstack_serves_no_ui(consul_http: httpx.Client) -> None:
    r = consul_http.get("/")
    assert r.status_code == 200
    assert r.text.startswith("Consul Agent: UI disabled.")


# Every pattern a Consul 1.22 agent registers (agent/http_register.go), with its methods.
CONSUL_PATTERNS: dict[str, tuple[str, ...]] = {
    "/v1/acl/bootstrap": ("PUT",),
    "/v1/acl/login": ("POST",),
    "/v1/acl/logout": ("POST",),
    "/v1/acl/replication": ("GET",),
    "/v1/acl/policies": ("GET",),
    "/v1/acl/policy": ("PUT",),
    "/v1/acl/policy/": ("GET", "PUT", "DELETE"),
    "/v1/acl/policy/name/": ("GET",),
    "/v1/acl/roles": ("GET",),
    "/v1/acl/role": ("PUT",),
    "/v1/acl/role/name/": ("GET",),
    "/v1/acl/role/": ("GET", "PUT", "DELETE"),
    "/v1/acl/binding-rules": ("GET",),
    "/v1/acl/binding-rule": ("PUT",),
    "/v1/acl/binding-rule/": ("GET", "PUT", "DELETE"),
    "/v1/acl/auth-methods": ("GET",),
    "/v1/acl/auth-method": ("PUT",),
    "/v1/acl/auth-method/": ("GET", "PUT", "DELETE"),
    "/v1/acl/tokens": ("GET",),
    "/v1/acl/token": ("PUT",),
    "/v1/acl/token/self": ("GET",),
    "/v1/acl/token/": ("GET", "PUT", "DELETE"),
    "/v1/agent/token/": ("PUT",),
    "/v1/agent/self": ("GET",),
    "/v1/agent/host": ("GET",),
    "/v1/agent/maintenance": ("PUT",),
    "/v1/agent/reload": ("PUT",),
    "/v1/agent/monitor": ("GET",),
    "/v1/agent/metrics": ("GET",),
    "/v1/agent/metrics/stream": ("GET",),
    "/v1/agent/services": ("GET",),
    "/v1/agent/service/": ("GET",),
    "/v1/agent/checks": ("GET",),
    "/v1/agent/members": ("GET",),
    "/v1/agent/join/": ("PUT",),
    "/v1/agent/leave": ("PUT",),
    "/v1/agent/force-leave/": ("PUT",),
    "/v1/agent/health/service/id/": ("GET",),
    "/v1/agent/health/service/name/": ("GET",),
    "/v1/agent/check/register": ("PUT",),
    "/v1/agent/check/deregister/": ("PUT",),
    "/v1/agent/check/pass/": ("PUT",),
    "/v1/agent/check/warn/": ("PUT",),
    "/v1/agent/check/fail/": ("PUT",),
    "/v1/agent/check/update/": ("PUT",),
    "/v1/agent/connect/authorize": ("POST",),
    "/v1/agent/connect/ca/roots": ("GET",),
    "/v1/agent/connect/ca/leaf/": ("GET",),
    "/v1/agent/service/register": ("PUT",),
    "/v1/agent/service/deregister/": ("PUT",),
    "/v1/agent/service/maintenance/": ("PUT",),
    "/v1/catalog/register": ("PUT",),
    "/v1/catalog/connect/": ("GET",),
    "/v1/catalog/deregister": ("PUT",),
    "/v1/catalog/datacenters": ("GET",),
    "/v1/catalog/nodes": ("GET",),
    "/v1/catalog/services": ("GET",),
    "/v1/catalog/service/": ("GET",),
    "/v1/catalog/node/": ("GET",),
    "/v1/catalog/node-services/": ("GET",),
    "/v1/catalog/gateway-services/": ("GET",),
    "/v1/config/": ("GET", "DELETE"),
    "/v1/config": ("PUT",),
    "/v1/connect/ca/configuration": ("GET", "PUT"),
    "/v1/connect/ca/roots": ("GET",),
    "/v1/connect/intentions": ("GET", "POST"),
    "/v1/connect/intentions/match": ("GET",),
    "/v1/connect/intentions/check": ("GET",),
    "/v1/connect/intentions/exact": ("GET", "PUT", "DELETE"),
    "/v1/connect/intentions/": ("GET", "PUT", "DELETE"),
    "/v1/coordinate/datacenters": ("GET",),
    "/v1/coordinate/nodes": ("GET",),
    "/v1/coordinate/node/": ("GET",),
    "/v1/coordinate/update": ("PUT",),
    "/v1/internal/federation-states": ("GET",),
    "/v1/internal/federation-states/mesh-gateways": ("GET",),
    "/v1/internal/federation-state/": ("GET",),
    "/v1/discovery-chain/": ("GET", "POST"),
    "/v1/event/fire/": ("PUT",),
    "/v1/event/list": ("GET",),
    "/v1/health/node/": ("GET",),
    "/v1/health/checks/": ("GET",),
    "/v1/health/state/": ("GET",),
    "/v1/health/service/": ("GET",),
    "/v1/health/connect/": ("GET",),
    "/v1/health/ingress/": ("GET",),
    "/v1/internal/ui/metrics-proxy/": ("GET",),
    "/v1/internal/ui/nodes": ("GET",),
    "/v1/internal/ui/node/": ("GET",),
    "/v1/internal/ui/services": ("GET",),
    "/v1/internal/ui/exported-services": ("GET",),
    "/v1/internal/ui/catalog-overview": ("GET",),
    "/v1/internal/ui/gateway-services-nodes/": ("GET",),
    "/v1/internal/ui/gateway-intentions/": ("GET",),
    "/v1/internal/ui/service-topology/": ("GET",),
    "/v1/internal/acl/authorize": ("POST",),
    "/v1/internal/service-virtual-ip": ("PUT",),
    "/v1/kv/": ("GET", "PUT", "DELETE"),
    "/v1/operator/raft/configuration": ("GET",),
    "/v1/operator/raft/transfer-leader": ("POST",),
    "/v1/operator/raft/peer": ("DELETE",),
    "/v1/operator/keyring": ("GET", "POST", "PUT", "DELETE"),
    "/v1/operator/usage": ("GET",),
    "/v1/operator/autopilot/configuration": ("GET", "PUT"),
    "/v1/operator/autopilot/health": ("GET",),
    "/v1/operator/autopilot/state": ("GET",),
    "/v1/peering/token": ("POST",),
    "/v1/peering/establish": ("POST",),
    "/v1/peering/": ("GET", "DELETE"),
    "/v1/peerings": ("GET",),
    "/v1/query": ("GET", "POST"),
    "/v1/query/": (),
    "/v1/session/create": ("PUT",),
    "/v1/session/destroy/": ("PUT",),
    "/v1/session/renew/": ("PUT",),
    "/v1/session/info/": ("GET",),
    "/v1/session/node/": ("GET",),
    "/v1/session/list": ("GET",),
    "/v1/status/leader": ("GET",),
    "/v1/status/peers": ("GET",),
    "/v1/snapshot": ("GET", "PUT"),
    "/v1/txn": ("PUT",),
}


def test_served_endpoints_use_consuls_patterns_and_method_lists() -> None:
    from devstack.consul.app import ENDPOINTS

    for endpoint in ENDPOINTS:
        assert endpoint.pattern in CONSUL_PATTERNS, endpoint.pattern
        assert endpoint.methods == CONSUL_PATTERNS[endpoint.pattern], endpoint.pattern


@requires_embedded
def test_endpoints_the_devstack_does_not_serve_answer_as_unknown_paths(
    consul_http: httpx.Client,
) -> None:
    from devstack.consul.app import ENDPOINTS

    served = {e.pattern for e in ENDPOINTS}
    for pattern, methods in CONSUL_PATTERNS.items():
        if pattern in served:
            continue
        path = pattern + "x" if pattern.endswith("/") else pattern
        for method in methods or ("GET",):
            r = consul_http.request(method, path)
            # Nothing served by the devstack may answer in its place.
            assert (r.status_code, r.text) == (404, API_HINT), (method, path, r.status_code)
