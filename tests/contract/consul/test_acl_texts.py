"""ACL answers word for word: who lacks which permission on what, and the token endpoints.

``acl.PermissionDeniedError`` names the token's AccessorID (the anonymous token's when none is
sent), the permission as ``resource:level``, and the resource name quoted when there is one.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from devstack.consul.server import ConsulServer
from devstack.consul.testing import ConsulTarget, requires_embedded

ANONYMOUS = "00000000-0000-0000-0000-000000000002"


def denied(accessor: str, permission: str, name: str | None = None) -> str:
    text = f"Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}'"
    return text if name is None else f'{text} on "{name}"'


@pytest.fixture
def admin(consul_acl_target: ConsulTarget) -> Iterator[httpx.Client]:
    headers = {"X-Consul-Token": consul_acl_target.token or ""}
    with httpx.Client(base_url=consul_acl_target.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def anon(consul_acl_target: ConsulTarget) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=consul_acl_target.url, timeout=30) as client:
        yield client


@pytest.fixture
def prefix() -> str:
    return f"acl-text-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def scoped(
    admin: httpx.Client, consul_acl_target: ConsulTarget, prefix: str
) -> Iterator[tuple[httpx.Client, str]]:
    """A client whose token may only write under ``prefix``; yields it and its AccessorID."""
    name = f"text-{uuid.uuid4().hex[:10]}"
    rules = f'key_prefix "{prefix}" {{ policy = "write" }}'
    policy = admin.put("/v1/acl/policy", json={"Name": name, "Rules": rules}).json()
    token = admin.put("/v1/acl/token", json={"Policies": [{"ID": policy["ID"]}]}).json()
    headers = {"X-Consul-Token": token["SecretID"]}
    with httpx.Client(base_url=consul_acl_target.url, headers=headers, timeout=30) as client:
        yield client, token["AccessorID"]
    admin.delete(f"/v1/acl/token/{token['AccessorID']}")
    admin.delete(f"/v1/acl/policy/{policy['ID']}")


def test_anonymous_denials_name_the_anonymous_token(anon: httpx.Client, prefix: str) -> None:
    key = prefix + "k"
    r = anon.get(f"/v1/kv/{key}")
    assert (r.status_code, r.text) == (403, denied(ANONYMOUS, "key:read", key))
    r = anon.put(f"/v1/kv/{key}", content=b"v")
    assert (r.status_code, r.text) == (403, denied(ANONYMOUS, "key:write", key))
    r = anon.get("/v1/acl/policies")
    assert (r.status_code, r.text) == (403, denied(ANONYMOUS, "acl:read"))


def test_scoped_token_denials_name_its_accessor(
    admin: httpx.Client, scoped: tuple[httpx.Client, str], prefix: str
) -> None:
    client, accessor = scoped
    node = admin.get("/v1/agent/self").json()["Config"]["NodeName"]
    outside = f"elsewhere-{prefix}k"
    cases = [
        (client.put(f"/v1/kv/{outside}", content=b"v"), denied(accessor, "key:write", outside)),
        (client.delete(f"/v1/kv/{outside}"), denied(accessor, "key:write", outside)),
        (
            client.delete(f"/v1/kv/{outside}", params={"recurse": ""}),
            denied(accessor, "key:write", outside),
        ),
        (client.get(f"/v1/kv/{outside}"), denied(accessor, "key:read", outside)),
        (client.put("/v1/session/create", json={}), denied(accessor, "session:write", node)),
        (
            client.put("/v1/agent/service/register", json={"Name": "text-svc"}),
            denied(accessor, "service:write", "text-svc"),
        ),
        (
            client.put("/v1/catalog/register", json={"Node": "text-node", "Address": "10.9.9.9"}),
            denied(accessor, "node:write", "text-node"),
        ),
        (
            client.put("/v1/agent/check/register", json={"Name": "text-check", "TTL": "10s"}),
            denied(accessor, "node:write", node),
        ),
        (client.get("/v1/agent/self"), denied(accessor, "agent:read", node)),
        (client.get("/v1/acl/tokens"), denied(accessor, "acl:read")),
        (client.put("/v1/acl/policy", json={"Name": "nope"}), denied(accessor, "acl:write")),
    ]
    for response, text in cases:
        assert (response.status_code, response.text) == (403, text), response.request.url


def test_txn_denials_are_reported_before_anything_runs(
    scoped: tuple[httpx.Client, str], prefix: str
) -> None:
    client, accessor = scoped
    outside = f"elsewhere-{prefix}k"
    r = client.put(
        "/v1/txn",
        json=[
            # would fail in the state store, but the permission check comes first
            {"KV": {"Verb": "check-index", "Key": prefix + "missing", "Index": 5}},
            {"KV": {"Verb": "set", "Key": outside, "Value": ""}},
            {"KV": {"Verb": "check-not-exists", "Key": outside}},
        ],
    )
    assert r.status_code == 409
    assert r.json()["Errors"] == [
        {"OpIndex": 1, "What": denied(accessor, "key:write", outside)},
        {"OpIndex": 2, "What": denied(accessor, "key:write", outside)},
    ]


def test_token_self_needs_a_token(admin: httpx.Client, anon: httpx.Client) -> None:
    r = anon.get("/v1/acl/token/self")
    assert (r.status_code, r.text) == (404, "Supplied token does not exist")
    # Reading a token by its secret does not resolve it first: an unknown one is just not found.
    r = anon.get("/v1/acl/token/self", headers={"X-Consul-Token": str(uuid.uuid4())})
    assert (r.status_code, r.text) == (404, "Supplied token does not exist")
    # Elsewhere an unknown secret is refused when it is resolved.
    r = anon.get("/v1/kv/x", headers={"X-Consul-Token": str(uuid.uuid4())})
    assert (r.status_code, r.text) == (403, "ACL not found")
    me = admin.get("/v1/acl/token/self")
    assert me.status_code == 200
    assert me.json()["SecretID"] == admin.headers["X-Consul-Token"]


def test_missing_acl_objects(admin: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    r = admin.get(f"/v1/acl/token/{missing}")
    assert (r.status_code, r.text) == (404, "Requested token does not exist: ACL not found")
    r = admin.get(f"/v1/acl/policy/{missing}")
    assert (r.status_code, r.text) == (404, "Requested policy does not exist: ACL not found")
    r = admin.delete(f"/v1/acl/token/{missing}")
    assert (r.status_code, r.text) == (404, "Cannot find token to delete")
    r = admin.get("/v1/acl/token/")
    assert (r.status_code, r.text) == (400, "Missing token AccessorID")
    r = admin.put("/v1/acl/token", json={"Policies": [{"Name": "no-such-policy"}]})
    assert (r.status_code, r.text) == (500, 'No such ACL policy with name "no-such-policy"')
    r = admin.put("/v1/acl/token", json={"SecretID": "not-a-uuid"})
    assert (r.status_code, r.text) == (500, "Invalid Token: SecretID is not a valid UUID")
    r = admin.put("/v1/acl/policy", json={"Name": "bad name"})
    assert r.status_code == 500
    assert r.text == (
        "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
    )


def test_token_clone(admin: httpx.Client, scoped: tuple[httpx.Client, str]) -> None:
    """``PUT /v1/acl/token/<accessor>/clone`` makes a new token, never an update of one."""
    _, accessor = scoped
    source = admin.get(f"/v1/acl/token/{accessor}").json()
    r = admin.put(f"/v1/acl/token/{accessor}/clone", json={"Description": "the copy"})
    assert r.status_code == 200, r.text
    copy = r.json()
    try:
        assert copy["AccessorID"] != accessor
        assert copy["SecretID"] != source["SecretID"]
        assert copy["Description"] == "the copy"
        assert [p["ID"] for p in copy["Policies"]] == [p["ID"] for p in source["Policies"]]
        assert copy["Local"] == source["Local"]
        # The source is untouched.
        assert (
            admin.get(f"/v1/acl/token/{accessor}").json()["Description"] == (source["Description"])
        )
    finally:
        admin.delete(f"/v1/acl/token/{copy['AccessorID']}")
    r = admin.put(f"/v1/acl/token/{uuid.uuid4()}/clone", json={})
    assert (r.status_code, r.text) == (403, "ACL not found")


def test_policy_by_name(admin: httpx.Client) -> None:
    name = f"by-name-{uuid.uuid4().hex[:8]}"
    created = admin.put(
        "/v1/acl/policy", json={"Name": name, "Rules": 'key "x" { policy = "read" }'}
    )
    assert created.status_code == 200
    try:
        r = admin.get(f"/v1/acl/policy/name/{name}")
        assert r.status_code == 200
        assert r.json()["ID"] == created.json()["ID"]
        assert r.json()["Rules"] == 'key "x" { policy = "read" }'
    finally:
        admin.delete(f"/v1/acl/policy/{created.json()['ID']}")
    r = admin.get(f"/v1/acl/policy/name/{name}")
    assert (r.status_code, r.text) == (404, "Requested policy does not exist: ACL not found")


def test_bootstrap_of_a_bootstrapped_cluster_is_refused(admin: httpx.Client) -> None:
    r = admin.put("/v1/acl/bootstrap")
    assert r.status_code == 403
    assert re.fullmatch(
        r"Permission denied: ACL bootstrap no longer allowed \(reset index: \d+\)", r.text
    ), r.text


@requires_embedded
def test_bootstrap_an_unbootstrapped_cluster() -> None:
    """``acl_enabled`` without a master token starts as ``consul agent`` with ACLs on and no
    ``initial_management`` token: nothing but the anonymous token until the bootstrap."""
    with (
        ConsulServer(node_name="devstack", acl_enabled=True) as server,
        httpx.Client(base_url=server.url, timeout=10) as anon,
    ):
        r = anon.put("/v1/kv/x", content=b"1")
        assert r.status_code == 403
        assert r.text == (
            f"Permission denied: token with AccessorID '{ANONYMOUS}' lacks permission "
            "'key:write' on \"x\""
        )
        r = anon.put("/v1/acl/bootstrap")
        assert r.status_code == 200, r.text
        body = r.json()
        assert list(body)[:3] == ["ID", "AccessorID", "SecretID"]
        assert body["ID"] == body["SecretID"]
        assert body["Description"] == "Bootstrap Token (Global Management)"
        assert body["Policies"] == [
            {"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}
        ]
        index = body["CreateIndex"]
        r = anon.put("/v1/acl/bootstrap")
        assert (r.status_code, r.text) == (
            403,
            f"Permission denied: ACL bootstrap no longer allowed (reset index: {index})",
        )
        headers = {"X-Consul-Token": body["SecretID"]}
        assert anon.put("/v1/kv/x", content=b"1", headers=headers).status_code == 200
        r = anon.get("/v1/acl/token/self", headers=headers)
        assert r.json()["AccessorID"] == body["AccessorID"]
    # A chosen secret is kept.
    secret = str(uuid.uuid4())
    with (
        ConsulServer(node_name="devstack", acl_enabled=True) as server,
        httpx.Client(base_url=server.url, timeout=10) as anon,
    ):
        r = anon.put("/v1/acl/bootstrap", json={"BootstrapSecret": secret})
        assert r.status_code == 200
        assert r.json()["SecretID"] == secret


@requires_embedded
def test_bootstrap_with_acls_off_is_401(consul_http: httpx.Client) -> None:
    r = consul_http.put("/v1/acl/bootstrap")
    assert (r.status_code, r.text) == (401, "ACL support disabled")


def test_events_under_acls(admin: httpx.Client, anon: httpx.Client) -> None:
    name = f"acl-ev-{uuid.uuid4().hex[:8]}"
    r = anon.put(f"/v1/event/fire/{name}")
    assert (r.status_code, r.text) == (403, "Permission denied")
    assert admin.put(f"/v1/event/fire/{name}").status_code == 200
    deadline = time.monotonic() + 5
    while True:
        r = admin.get("/v1/event/list", params={"name": name})
        if r.json() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [e["Name"] for e in r.json()] == [name]
    # Without event:read the list is filtered, and says so only to a request with a token.
    r = anon.get("/v1/event/list", params={"name": name})
    assert r.json() == []
    assert "X-Consul-Results-Filtered-By-ACLs" not in r.headers
