"""ACLs: token sources, 403s, least-privilege policies (HCL and JSON), filtered list reads."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import consul
import httpx
import pytest

from devstack.consul.testing import ConsulTarget, py_consul, requires_embedded


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
    return f"acl-{uuid.uuid4().hex[:10]}/"


def _token(admin: httpx.Client, rules: str) -> str:
    name = f"contract-{uuid.uuid4().hex[:10]}"
    r = admin.put("/v1/acl/policy", json={"Name": name, "Rules": rules})
    assert r.status_code == 200, r.text
    policy = r.json()
    assert policy["Name"] == name
    r = admin.put("/v1/acl/token", json={"Description": name, "Policies": [{"ID": policy["ID"]}]})
    assert r.status_code == 200, r.text
    token = r.json()
    assert token["Policies"] == [{"ID": policy["ID"], "Name": name}]
    return str(token["SecretID"])


def test_anonymous_and_unknown_tokens_are_refused(
    admin: httpx.Client, anon: httpx.Client, prefix: str
) -> None:
    assert admin.put(f"/v1/kv/{prefix}k", content=b"v").status_code == 200
    r = anon.get(f"/v1/kv/{prefix}k")
    assert r.status_code == 403
    assert r.text.startswith("Permission denied")
    assert anon.put(f"/v1/kv/{prefix}k", content=b"v").status_code == 403
    r = anon.get(f"/v1/kv/{prefix}k", headers={"X-Consul-Token": str(uuid.uuid4())})
    assert r.status_code == 403
    assert r.text == "ACL not found"


def test_hcl_policy_least_privilege(admin: httpx.Client, anon: httpx.Client, prefix: str) -> None:
    rules = (
        f'key_prefix "{prefix}app/" {{ policy = "write" }}\n'
        f'key_prefix "{prefix}ro/" {{ policy = "read" }}'
    )
    token = _token(admin, rules)
    admin.put(f"/v1/kv/{prefix}ro/x", content=b"r")
    hdr = {"X-Consul-Token": token}
    assert anon.put(f"/v1/kv/{prefix}app/x", content=b"v", headers=hdr).text == "true"
    assert anon.get(f"/v1/kv/{prefix}app/x", headers=hdr).status_code == 200
    assert anon.get(f"/v1/kv/{prefix}ro/x", headers=hdr).status_code == 200
    assert anon.put(f"/v1/kv/{prefix}ro/x", content=b"v", headers=hdr).status_code == 403
    assert anon.put(f"/v1/kv/{prefix}other", content=b"v", headers=hdr).status_code == 403
    assert anon.delete(f"/v1/kv/{prefix}ro/x", headers=hdr).status_code == 403


def test_token_sources(admin: httpx.Client, anon: httpx.Client, prefix: str) -> None:
    token = _token(admin, f'key_prefix "{prefix}" {{ policy = "write" }}')
    url = f"/v1/kv/{prefix}src"
    assert anon.put(url, content=b"1", headers={"X-Consul-Token": token}).status_code == 200
    assert anon.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert anon.get(url, params={"token": token}).status_code == 200
    assert anon.get(url).status_code == 403


def test_json_rules_longest_prefix_and_filtered_lists(
    admin: httpx.Client, anon: httpx.Client, prefix: str
) -> None:
    rules = json.dumps(
        {"key_prefix": {prefix: {"policy": "read"}, f"{prefix}secret/": {"policy": "deny"}}}
    )
    token = _token(admin, rules)
    for k in ("a", "secret/b", "c"):
        admin.put(f"/v1/kv/{prefix}{k}", content=b"v")
    hdr = {"X-Consul-Token": token}
    r = anon.get(f"/v1/kv/{prefix}", params={"recurse": ""}, headers=hdr)
    assert r.status_code == 200
    assert [e["Key"] for e in r.json()] == [prefix + "a", prefix + "c"]
    assert r.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    r = anon.get(f"/v1/kv/{prefix}", params={"keys": ""}, headers=hdr)
    assert r.json() == [prefix + "a", prefix + "c"]
    assert anon.get(f"/v1/kv/{prefix}secret/b", headers=hdr).status_code == 403
    # the management token sees everything and no filter header
    r = admin.get(f"/v1/kv/{prefix}", params={"recurse": ""})
    assert len(r.json()) == 3
    assert "X-Consul-Results-Filtered-By-ACLs" not in r.headers


def test_session_and_service_rules(
    admin: httpx.Client, anon: httpx.Client, consul_acl_target: ConsulTarget, prefix: str
) -> None:
    node = admin.get("/v1/agent/self").json()["Config"]["NodeName"]
    svc = prefix.rstrip("/")
    only_kv = _token(admin, f'key_prefix "{prefix}" {{ policy = "write" }}')
    r = anon.put("/v1/session/create", json={}, headers={"X-Consul-Token": only_kv})
    assert r.status_code == 403
    full = _token(
        admin,
        f'key_prefix "{prefix}" {{ policy = "write" }}\n'
        f'session_prefix "" {{ policy = "write" }}\n'
        f'service_prefix "{svc}" {{ policy = "write" }}\n'
        f'node_prefix "" {{ policy = "read" }}',
    )
    hdr = {"X-Consul-Token": full}
    r = anon.put("/v1/session/create", json={"LockDelay": "0s"}, headers=hdr)
    assert r.status_code == 200
    sid = r.json()["ID"]
    assert anon.put(f"/v1/kv/{prefix}lock", params={"acquire": sid}, headers=hdr).text == "true"
    assert node
    r = anon.put("/v1/agent/service/register", json={"Name": svc}, headers=hdr)
    assert r.status_code == 200
    r = anon.put("/v1/agent/service/register", json={"Name": "forbidden-svc"}, headers=hdr)
    assert r.status_code == 403
    r = anon.get("/v1/catalog/services", headers=hdr)
    assert svc in r.json()
    assert "consul" not in r.json()
    assert r.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    assert [
        e["Service"]["ID"] for e in anon.get(f"/v1/health/service/{svc}", headers=hdr).json()
    ] == [svc]
    anon.put(f"/v1/session/destroy/{sid}", headers=hdr)
    anon.put(f"/v1/agent/service/deregister/{svc}", headers=hdr)


def test_txn_denials_are_409_errors(admin: httpx.Client, anon: httpx.Client, prefix: str) -> None:
    token = _token(admin, f'key_prefix "{prefix}ok/" {{ policy = "write" }}')
    value = base64.b64encode(b"v").decode()
    r = anon.put(
        "/v1/txn",
        json=[
            {"KV": {"Verb": "set", "Key": f"{prefix}ok/a", "Value": value}},
            {"KV": {"Verb": "set", "Key": f"{prefix}no/a", "Value": value}},
        ],
        headers={"X-Consul-Token": token},
    )
    assert r.status_code == 409
    errors = r.json()["Errors"]
    assert [e["OpIndex"] for e in errors] == [1]
    assert errors[0]["What"].startswith("Permission denied")
    assert admin.get(f"/v1/kv/{prefix}ok/a").status_code == 404


def test_py_consul_with_tokens(
    consul_acl_target: ConsulTarget, admin: httpx.Client, prefix: str
) -> None:
    token = _token(admin, f'key_prefix "{prefix}" {{ policy = "write" }}')
    with py_consul(consul_acl_target.address, token) as scoped:
        assert scoped.kv.put(prefix + "x", "1") is True
        with pytest.raises(consul.ACLPermissionDenied):
            scoped.kv.put("elsewhere-" + prefix + "x", "1")
    with py_consul(consul_acl_target.address, consul_acl_target.token) as mgmt:
        assert any(t["Description"].startswith("contract-") for t in mgmt.acl.token.list())


def test_bad_rules_are_refused_by_the_rpc(admin: httpx.Client) -> None:
    # ACL.PolicySet rejects the rules, so the HTTP layer answers 500 with the parser's text.
    r = admin.put(
        "/v1/acl/policy", json={"Name": f"bad-{uuid.uuid4().hex[:8]}", "Rules": "key_prefix {"}
    )
    assert r.status_code == 500
    assert r.text.startswith("Failed to parse ACL rules")


@requires_embedded
def test_acl_endpoints_when_disabled(consul_http: httpx.Client) -> None:
    r = consul_http.put("/v1/acl/token", json={})
    assert r.status_code == 401
    assert r.text == "ACL support disabled"
