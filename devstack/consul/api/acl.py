"""``/v1/acl/token*`` and ``/v1/acl/polic*``: create the least-privileged tokens tests run with.

Only the parts of Consul's ACL system a platform team uses to hand a controller its token are
emulated: policies (name, description, rules) and tokens linking policies by ID or name.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from devstack.consul.acl import (
    ANONYMOUS_SECRET,
    READ,
    WRITE,
    Policy,
    RuleError,
    Token,
    compile_rules,
)
from devstack.consul.acl import _now as now_text
from devstack.consul.api.common import (
    authorizer,
    core_of,
    ok_json,
    read_object,
    request_token,
    require_scalar,
)
from devstack.consul.core import Core
from devstack.consul.encoding import CI
from devstack.consul.errors import ConsulError, bad_request, server_error


def _enabled(request: web.Request, need: int) -> Core:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    require_scalar(request, "acl", need)
    return core


def _not_found() -> ConsulError:
    return ConsulError(403, "ACL not found")


# -- policies ------------------------------------------------------------------------------------


def _apply_policy(core: Core, body: CI, existing: Policy | None) -> Policy:
    name = body.text("Name") or (existing.name if existing else "")
    if not name:
        raise bad_request("Invalid Policy: no Name is set")
    rules_text = (
        body.text("Rules") if body.has("Rules") else (existing.rules_text if existing else "")
    )
    try:
        rules = compile_rules(rules_text)
    except RuleError as exc:
        raise bad_request(f"Invalid Policy: failed to parse rules: {exc}") from exc
    clash = core.acl.policy_by_name(name)
    if clash is not None and (existing is None or clash.id != existing.id):
        raise bad_request(f"Invalid Policy: A Policy with Name {name!r} already exists")
    dcs = body.get("Datacenters") or []
    idx = core.state.next_index()
    policy = Policy(
        id=existing.id if existing else str(uuid.uuid4()),
        name=name,
        description=body.text("Description")
        if body.has("Description")
        else (existing.description if existing else ""),
        rules_text=rules_text,
        rules=rules,
        datacenters=[str(d) for d in dcs] if isinstance(dcs, list) else [],
        create_index=existing.create_index if existing else idx,
        modify_index=idx,
    )
    core.acl.policies[policy.id] = policy
    core.state.bump("acl-policies", idx)
    return policy


async def policy_create(request: web.Request) -> web.Response:
    core = _enabled(request, WRITE)
    body = await read_object(request)
    return ok_json(_apply_policy(core, body, None).to_json())


async def policy_item(request: web.Request) -> web.Response:
    pid = request.match_info["id"]
    if request.method == "GET":
        core = _enabled(request, READ)
        policy = core.acl.policies.get(pid)
        if policy is None:
            raise _not_found()
        return ok_json(policy.to_json())
    core = _enabled(request, WRITE)
    policy = core.acl.policies.get(pid)
    if policy is None:
        raise server_error(f"Cannot find policy {pid}")
    if request.method == "DELETE":
        del core.acl.policies[pid]
        for tok in core.acl.tokens.values():
            if pid in tok.policy_ids:
                tok.policy_ids.remove(pid)
        core.state.bump("acl-policies", core.state.next_index())
        return ok_json(True)
    body = await read_object(request)
    return ok_json(_apply_policy(core, body, policy).to_json())


async def policy_by_name(request: web.Request) -> web.Response:
    core = _enabled(request, READ)
    policy = core.acl.policy_by_name(request.match_info["name"])
    if policy is None:
        raise _not_found()
    return ok_json(policy.to_json())


async def policy_list(request: web.Request) -> web.Response:
    core = _enabled(request, READ)
    out = []
    for policy in sorted(core.acl.policies.values(), key=lambda p: p.name):
        item = policy.to_json()
        item.pop("Rules", None)
        out.append(item)
    return ok_json(out)


# -- tokens --------------------------------------------------------------------------------------


def _policy_ids(core: Core, body: CI) -> list[str]:
    links = body.get("Policies") or []
    if not isinstance(links, list):
        raise bad_request("Request decode failed: Policies must be a list")
    ids: list[str] = []
    for link in links:
        if not isinstance(link, dict):
            raise bad_request("Request decode failed: invalid policy link")
        ci = CI(link)
        pid, name = ci.text("ID"), ci.text("Name")
        policy = core.acl.policies.get(pid) if pid else core.acl.policy_by_name(name)
        if policy is None:
            raise bad_request(f"Invalid Policy: No such policy {pid or name!r}")
        if policy.id not in ids:
            ids.append(policy.id)
    return ids


async def token_create(request: web.Request) -> web.Response:
    core = _enabled(request, WRITE)
    body = await read_object(request)
    secret = body.text("SecretID") or str(uuid.uuid4())
    accessor = body.text("AccessorID") or str(uuid.uuid4())
    if secret in core.acl.tokens or core.acl.by_accessor(accessor) is not None:
        raise bad_request("Invalid Token: SecretID or AccessorID is already in use")
    idx = core.state.next_index()
    token = Token(
        accessor=accessor,
        secret=secret,
        description=body.text("Description"),
        policy_ids=_policy_ids(core, body),
        local=bool(body.get("Local", default=False)),
        create_time=now_text(),
        create_index=idx,
        modify_index=idx,
    )
    core.acl.tokens[secret] = token
    core.state.bump("acl-tokens", idx)
    return ok_json(token.to_json(core.acl.policies))


async def token_self(request: web.Request) -> web.Response:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    authorizer(request)
    token = core.acl.tokens.get(request_token(request) or ANONYMOUS_SECRET)
    if token is None:
        raise _not_found()
    return ok_json(token.to_json(core.acl.policies))


async def token_item(request: web.Request) -> web.Response:
    accessor = request.match_info["id"]
    if request.method == "GET":
        core = _enabled(request, READ)
        token = core.acl.by_accessor(accessor)
        if token is None:
            raise _not_found()
        return ok_json(token.to_json(core.acl.policies))
    core = _enabled(request, WRITE)
    token = core.acl.by_accessor(accessor)
    if token is None:
        raise server_error(f"Cannot find token {accessor!r}")
    if request.method == "DELETE":
        if token.management and token.secret == core.config.acl_master_token:
            raise bad_request("Cannot delete the initial management token")
        del core.acl.tokens[token.secret]
        core.state.bump("acl-tokens", core.state.next_index())
        return ok_json(True)
    body = await read_object(request)
    if body.has("Description"):
        token.description = body.text("Description")
    if body.has("Policies"):
        token.policy_ids = _policy_ids(core, body)
    token.modify_index = core.state.next_index()
    core.state.bump("acl-tokens", token.modify_index)
    return ok_json(token.to_json(core.acl.policies))


async def token_list(request: web.Request) -> web.Response:
    core = _enabled(request, READ)
    out = []
    for token in sorted(core.acl.tokens.values(), key=lambda t: t.create_index):
        item = token.to_json(core.acl.policies, show_secret=False)
        out.append(item)
    return ok_json(out)
