"""Nomad ACLs: bootstrap, policies, tokens, and capability enforcement on the endpoints."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.nomad.aclpolicy import ACL, PolicyError, parse_rules
from devstack.nomad.testing import NomadTarget, requires_embedded_nomad, start_embedded_nomad

from .helpers import docker_job

pytestmark = pytest.mark.contract


@pytest.fixture
def admin(nomad_acl_target: NomadTarget) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=nomad_acl_target.url, headers=nomad_acl_target.headers, timeout=10
    ) as client:
        yield client


@pytest.fixture
def names(admin: httpx.Client) -> Iterator[list[str]]:
    """Policy names created by a test, deleted afterwards (a real cluster is shared)."""
    created: list[str] = []
    yield created
    for name in created:
        admin.delete(f"/v1/acl/policy/{name}")


def _policy(admin: httpx.Client, names: list[str], rules: str) -> str:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    resp = admin.post(
        f"/v1/acl/policy/{name}", json={"Name": name, "Description": "test", "Rules": rules}
    )
    assert resp.status_code == 200, resp.text
    names.append(name)
    return name


def _token(admin: httpx.Client, *policies: str) -> dict[str, Any]:
    resp = admin.post(
        "/v1/acl/token", json={"Name": "contract", "Type": "client", "Policies": list(policies)}
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _as(target: NomadTarget, secret: str) -> httpx.Client:
    return httpx.Client(base_url=target.url, headers={"X-Nomad-Token": secret}, timeout=10)


def test_second_bootstrap_is_refused(admin: httpx.Client) -> None:
    resp = admin.post("/v1/acl/bootstrap")
    assert resp.status_code == 400
    assert resp.text.startswith("ACL bootstrap already done (reset index: ")


@requires_embedded_nomad
def test_an_unbootstrapped_server_bootstraps_once() -> None:
    server = start_embedded_nomad(acl_enabled=True)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as anon:
            assert anon.get("/v1/jobs").status_code == 403
            assert anon.get("/v1/agent/self").status_code == 403
            first = anon.post("/v1/acl/bootstrap")
            assert first.status_code == 200, first.text
            token = first.json()
            assert (token["Type"], token["Name"]) == ("management", "Bootstrap Token")
            assert token["SecretID"]
            assert token["AccessorID"]
            auth = {"X-Nomad-Token": token["SecretID"]}
            assert anon.get("/v1/jobs", headers=auth).status_code == 200
            agent = anon.get("/v1/agent/self", headers=auth).json()
            assert agent["config"]["ACL"]["Enabled"] is True
            again = anon.post("/v1/acl/bootstrap")
            assert again.status_code == 400
            assert again.text == f"ACL bootstrap already done (reset index: {token['CreateIndex']})"
    finally:
        server.stop()


def test_policy_crud(admin: httpx.Client, names: list[str]) -> None:
    rules = 'namespace "default" {\n  policy = "read"\n}\nnode {\n  policy = "read"\n}\n'
    name = _policy(admin, names, rules)
    got = admin.get(f"/v1/acl/policy/{name}").json()
    assert (got["Name"], got["Rules"], got["Description"]) == (name, rules, "test")
    assert name in [p["Name"] for p in admin.get("/v1/acl/policies").json()]
    bad = admin.post(
        f"/v1/acl/policy/{name}",
        json={"Name": name, "Rules": 'namespace "x" {\n policy = "nope"\n}'},
    )
    assert bad.status_code == 400
    assert "Invalid namespace policy" in bad.text
    mismatch = admin.post(f"/v1/acl/policy/{name}", json={"Name": "other", "Rules": rules})
    assert mismatch.status_code == 400
    assert admin.delete(f"/v1/acl/policy/{name}").status_code == 200
    missing = admin.get(f"/v1/acl/policy/{name}")
    assert missing.status_code == 404
    assert missing.text == "ACL policy not found"


def test_token_crud_and_self(
    nomad_acl_target: NomadTarget, admin: httpx.Client, names: list[str]
) -> None:
    name = _policy(admin, names, 'namespace "default" {\n  policy = "read"\n}\n')
    token = _token(admin, name)
    assert token["Type"] == "client"
    assert token["Policies"] == [name]
    listed = {t["AccessorID"]: t for t in admin.get("/v1/acl/tokens").json()}
    assert token["AccessorID"] in listed
    assert "SecretID" not in listed[token["AccessorID"]]
    by_prefix = admin.get("/v1/acl/tokens", params={"prefix": token["AccessorID"][:8]}).json()
    assert token["AccessorID"] in [t["AccessorID"] for t in by_prefix]
    assert all(t["AccessorID"].startswith(token["AccessorID"][:8]) for t in by_prefix)
    clients = admin.get("/v1/acl/tokens", params={"filter": 'Type == "client"'}).json()
    assert token["AccessorID"] in [t["AccessorID"] for t in clients]
    assert all(t["Type"] == "client" for t in clients)
    read = admin.get(f"/v1/acl/token/{token['AccessorID']}").json()
    assert read["SecretID"] == token["SecretID"]
    with _as(nomad_acl_target, token["SecretID"]) as client:
        me = client.get("/v1/acl/token/self").json()
        assert me["AccessorID"] == token["AccessorID"]
        # A client token may read its own policy but not list every token.
        assert client.get(f"/v1/acl/policy/{name}").status_code == 200
        assert client.get("/v1/acl/tokens").status_code == 403
        assert client.post("/v1/acl/token", json={"Type": "management"}).status_code == 403
    renamed = admin.post(
        f"/v1/acl/token/{token['AccessorID']}",
        json={"AccessorID": token["AccessorID"], "Name": "renamed", "Policies": [name]},
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["Name"] == "renamed"
    no_policy = admin.post("/v1/acl/token", json={"Name": "x", "Type": "client"})
    assert no_policy.status_code == 400
    assert admin.delete(f"/v1/acl/token/{token['AccessorID']}").status_code == 200
    with _as(nomad_acl_target, token["SecretID"]) as client:
        assert client.get("/v1/jobs").status_code == 403


def test_least_privilege_is_enforced(
    nomad_acl_target: NomadTarget, admin: httpx.Client, names: list[str]
) -> None:
    job_id = f"contract-{uuid.uuid4().hex[:8]}"
    reader = _token(admin, _policy(admin, names, 'namespace "default" {\n  policy = "read"\n}'))
    submitter = _token(
        admin,
        _policy(admin, names, 'namespace "default" {\n  capabilities = ["submit-job"]\n}'),
    )
    nodes = _token(admin, _policy(admin, names, 'node {\n  policy = "read"\n}'))
    try:
        with _as(nomad_acl_target, submitter["SecretID"]) as client:
            assert client.post("/v1/jobs", json={"Job": docker_job(job_id)}).status_code == 200
            denied = client.get("/v1/jobs")
            assert (denied.status_code, denied.text) == (403, "Permission denied")
        with _as(nomad_acl_target, reader["SecretID"]) as client:
            assert client.get("/v1/jobs").status_code == 200
            assert client.get(f"/v1/job/{job_id}").status_code == 200
            assert client.get(f"/v1/job/{job_id}/allocations").status_code == 200
            assert client.get("/v1/allocations").status_code == 200
            assert client.post("/v1/jobs", json={"Job": docker_job(job_id)}).status_code == 403
            assert client.delete(f"/v1/job/{job_id}").status_code == 403
            assert client.get("/v1/nodes").status_code == 403
        with _as(nomad_acl_target, nodes["SecretID"]) as client:
            listed = client.get("/v1/nodes")
            assert listed.status_code == 200
            node_id = listed.json()[0]["ID"]
            drain = client.post(f"/v1/node/{node_id}/drain", json={"DrainSpec": None})
            assert drain.status_code == 403
            assert client.get("/v1/jobs").status_code == 403
    finally:
        admin.delete(f"/v1/job/{job_id}", params={"purge": "true"})
        for t in (reader, submitter, nodes):
            admin.delete(f"/v1/acl/token/{t['AccessorID']}")


@requires_embedded_nomad
def test_devstack_admin_paths_need_management(
    nomad_acl_target: NomadTarget, admin: httpx.Client, names: list[str]
) -> None:
    token = _token(
        admin,
        _policy(
            admin, names, 'namespace "*" {\n  policy = "write"\n}\nnode {\n  policy = "write"\n}'
        ),
    )
    with _as(nomad_acl_target, token["SecretID"]) as client:
        resp = client.post("/v1/devstack/nodes", json={"Name": "extra"})
        assert resp.status_code == 403
        assert "management token" in resp.text
    assert admin.post("/v1/devstack/nodes", json={"Name": "extra"}).status_code == 200


def test_rules_merge_and_glob_precedence() -> None:
    broad = parse_rules(
        'namespace "*" {\n  policy = "read"\n}\nnamespace "prod-*" {\n  policy = "deny"\n}'
    )
    writer = parse_rules('namespace "dev" {\n  policy = "write"\n}\nagent {\n  policy = "read"\n}')
    acl = ACL.merge([broad, writer])
    assert acl.allow_ns("default", "read-job")
    assert not acl.allow_ns("default", "submit-job")
    assert not acl.allow_ns("prod-eu", "read-job")
    assert acl.allow_ns("dev", "submit-job", "dispatch-job")
    assert acl.allow("agent", "read")
    assert not acl.allow("agent", "write")
    assert not acl.allow("node", "read")
    json_rules = parse_rules('{"namespace": {"default": {"policy": "write"}}}')
    assert ACL.merge([json_rules]).allow_ns("default", "submit-job")
    with pytest.raises(PolicyError, match="Invalid namespace capability 'fly'"):
        parse_rules('namespace "x" {\n  capabilities = ["fly"]\n}')
