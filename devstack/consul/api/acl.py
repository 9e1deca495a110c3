"""``/v1/acl/token*`` and ``/v1/acl/polic*``: create the least-privileged tokens tests run with.

Only the parts of Consul's ACL system a platform team uses to hand a controller its token are
emulated: policies (name, description, rules) and tokens linking policies by ID or name. The
texts and statuses follow ``agent/acl_endpoint.go`` and the ``ACL.*`` RPCs: ACLs off is 401,
a missing permission 403 with the token's AccessorID, validation failures in the RPC 500, and a
missing policy or token 404 with ``Requested ... does not exist: ACL not found``.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from devstack.consul.acl import (
    ANONYMOUS_ACCESSOR,
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
    parse_query_options,
    read_object,
    request_token,
    require_scalar,
)
from devstack.consul.api.mux import tail
from devstack.consul.api.reads import forward
from devstack.consul.core import Core
from devstack.consul.encoding import CI
from devstack.consul.errors import ConsulError, bad_request, go_quote, server_error

_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# UUIDs Consul keeps for itself (the anonymous token, the global-management policy...).
_RESERVED_PREFIX = "00000000-0000-0000-0000-0000000000"


def _enabled(request: web.Request, need: int) -> Core:
    """ACLs on, the RPC forwarded, then ``acl:read``/``acl:write`` on the request's token."""
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    forward(core, request.query.get("dc", ""))
    require_scalar(request, "acl", need)
    return core


def _not_exist(kind: str) -> ConsulError:
    return ConsulError(404, f"Requested {kind} does not exist: ACL not found")


# -- policies ------------------------------------------------------------------------------------


def _apply_policy(core: Core, body: CI, existing: Policy | None) -> Policy:
    """``ACL.PolicySet``'s checks, in its order, with its texts (all 500s)."""
    name = body.text("Name")
    if not name:
        raise server_error("Invalid Policy: no Name is set")
    if not _POLICY_NAME.match(name):
        raise server_error(
            "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
        )
    clash = core.acl.policy_by_name(name)
    if existing is None and clash is not None:
        raise server_error(f"Invalid Policy: A Policy with Name {go_quote(name)} already exists")
    if existing is not None and clash is not None and clash.id != existing.id:
        raise server_error(f"Invalid Policy: A policy with name {go_quote(name)} already exists")
    rules_text = body.text("Rules")
    try:
        rules = compile_rules(rules_text)
    except RuleError as exc:
        raise server_error(f"Failed to parse ACL rules: {exc}") from exc
    dcs = body.get("Datacenters") or []
    idx = core.state.next_index()
    policy = Policy(
        id=existing.id if existing else str(uuid.uuid4()),
        name=name,
        description=body.text("Description"),
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
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    body = await read_object(request, "structs.ACLPolicy", "Policy decoding failed")
    if body.text("ID"):
        raise bad_request("Cannot specify the ID when creating a new policy")
    _enabled(request, WRITE)
    return ok_json(_apply_policy(core, body, None).to_json())


async def policy_item(request: web.Request) -> web.Response:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    pid = tail(request)
    if not pid and request.method != "PUT":
        raise bad_request("Missing policy ID")
    if request.method == "GET":
        parse_query_options(request, core)
        _enabled(request, READ)
        policy = core.acl.policies.get(pid)
        if policy is None:
            raise _not_exist("policy")
        return ok_json(policy.to_json())
    if request.method == "DELETE":
        _enabled(request, WRITE)
        if core.acl.policies.pop(pid, None) is None:
            raise ConsulError(404, "Cannot find policy to delete")
        for tok in core.acl.tokens.values():
            if pid in tok.policy_ids:
                tok.policy_ids.remove(pid)
        core.state.bump("acl-policies", core.state.next_index())
        return ok_json(True)
    body = await read_object(request, "structs.ACLPolicy", "Policy decoding failed")
    body_id = body.text("ID")
    if body_id and body_id != pid:
        raise bad_request("Policy ID in URL and payload do not match")
    _enabled(request, WRITE)
    if not _UUID.match(pid):
        raise server_error("Policy ID invalid UUID")
    policy = core.acl.policies.get(pid)
    if policy is None:
        raise server_error(f"cannot find policy {pid}")
    return ok_json(_apply_policy(core, body, policy).to_json())


async def policy_by_name(request: web.Request) -> web.Response:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    name = tail(request)
    if not name:
        raise bad_request("Missing policy Name")
    parse_query_options(request, core)
    _enabled(request, READ)
    policy = core.acl.policy_by_name(name)
    if policy is None:
        raise _not_exist("policy")
    return ok_json(policy.to_json())


async def policy_list(request: web.Request) -> web.Response:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    parse_query_options(request, core)
    _enabled(request, READ)
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
        raise bad_request(
            "Token decoding failed: json: cannot unmarshal value into Go struct field "
            "ACLToken.Policies of type []structs.ACLTokenPolicyLink"
        )
    ids: list[str] = []
    for link in links:
        if not isinstance(link, dict):
            continue
        ci = CI(link)
        pid, name = ci.text("ID"), ci.text("Name")
        if pid:
            policy = core.acl.policies.get(pid)
            if policy is None:
                raise server_error(f"No such ACL policy with ID {go_quote(pid)}")
        else:
            policy = core.acl.policy_by_name(name)
            if policy is None:
                raise server_error(f"No such ACL policy with name {go_quote(name)}")
        if policy.id not in ids:
            ids.append(policy.id)
    return ids


def _new_id(core: Core, body: CI, field: str) -> str:
    """An AccessorID or SecretID: generated, or given and then a free, unreserved UUID."""
    given = body.text(field)
    if not given:
        return str(uuid.uuid4())
    if not _UUID.match(given):
        raise server_error(f"Invalid Token: {field} is not a valid UUID")
    in_use = given in core.acl.tokens or core.acl.by_accessor(given) is not None
    if in_use:
        raise server_error(f"Invalid Token: {field} is already in use")
    if given.startswith(_RESERVED_PREFIX):
        raise server_error(
            f"Invalid Token: UUIDs with the prefix {go_quote(_RESERVED_PREFIX)} are reserved"
        )
    return given


async def token_create(request: web.Request) -> web.Response:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    body = await read_object(request, "structs.ACLToken", "Token decoding failed")
    _enabled(request, WRITE)
    accessor = _new_id(core, body, "AccessorID")
    secret = _new_id(core, body, "SecretID")
    policy_ids = _policy_ids(core, body)
    idx = core.state.next_index()
    token = Token(
        accessor=accessor,
        secret=secret,
        description=body.text("Description"),
        policy_ids=policy_ids,
        local=bool(body.get("Local", default=False)),
        create_time=now_text(),
        create_index=idx,
        modify_index=idx,
    )
    core.acl.tokens[secret] = token
    core.state.bump("acl-tokens", idx)
    return ok_json(token.to_json(core.acl.policies))


async def bootstrap(request: web.Request) -> web.Response:
    """``ACL.BootstrapTokens``: the first management token, once; then refused with the index
    of the bootstrap (a configured master token counts as one)."""
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    secret = ""
    if request.content_length:
        body = await read_object(request, "api.BootstrapRequest", "Request decoding failed")
        secret = body.text("BootstrapSecret")
    forward(core, request.query.get("dc", ""))
    if core.acl.bootstrap_index:
        raise ConsulError(
            403,
            "Permission denied: ACL bootstrap no longer allowed "
            f"(reset index: {core.acl.bootstrap_index})",
        )
    idx = core.state.next_index()
    token = Token(
        accessor=str(uuid.uuid4()),
        secret=secret or str(uuid.uuid4()),
        description="Bootstrap Token (Global Management)",
        policy_ids=[],
        local=False,
        create_time=now_text(),
        create_index=idx,
        modify_index=idx,
        management=True,
    )
    core.acl.tokens[token.secret] = token
    core.acl.bootstrap_index = idx
    core.state.bump("acl-tokens", idx)
    return ok_json({"ID": token.secret, **token.to_json(core.acl.policies)})


async def token_self(request: web.Request) -> web.Response:
    """The token the request carries, looked up by its secret; none sent is none found."""
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    parse_query_options(request, core)
    forward(core, request.query.get("dc", ""))
    secret = request_token(request)
    token = core.acl.tokens.get(secret) if secret else None
    if token is None:
        raise ConsulError(
            404,
            "Supplied token does not exist",
            {"X-Consul-Index": "1", "X-Consul-KnownLeader": "false", "X-Consul-LastContact": "0"},
        )
    return ok_json(token.to_json(core.acl.policies))


async def token_item(request: web.Request) -> web.Response:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    accessor = tail(request)
    if not accessor and request.method != "PUT":
        raise bad_request("Missing token AccessorID")
    if request.method == "GET":
        parse_query_options(request, core)
        _enabled(request, READ)
        token = core.acl.by_accessor(accessor)
        if token is None:
            raise _not_exist("token")
        return ok_json(token.to_json(core.acl.policies, show_secret=_can_see_secret(request)))
    if request.method == "DELETE":
        _enabled(request, WRITE)
        token = core.acl.by_accessor(accessor)
        if token is None:
            raise ConsulError(404, "Cannot find token to delete")
        if token.accessor == ANONYMOUS_ACCESSOR:
            raise server_error("Delete operation not permitted on the anonymous token")
        if token.secret == (request_token(request) or ANONYMOUS_SECRET):
            raise server_error("Deletion of the request's authorization token is not permitted")
        del core.acl.tokens[token.secret]
        core.state.bump("acl-tokens", core.state.next_index())
        return ok_json(True)
    if accessor.endswith("/clone"):
        return await _token_clone(request, core, accessor[: -len("/clone")])
    body = await read_object(request, "structs.ACLToken", "Token decoding failed")
    body_accessor = body.text("AccessorID") or accessor
    if body_accessor != accessor:
        raise bad_request("Token Accessor ID in URL and payload do not match")
    _enabled(request, WRITE)
    token = core.acl.by_accessor(accessor)
    if token is None:
        raise server_error(f"Cannot find token {go_quote(accessor)}")
    secret = body.text("SecretID")
    if secret and secret != token.secret:
        raise server_error("Changing a tokens SecretID is not permitted")
    token.description = body.text("Description")
    token.policy_ids = _policy_ids(core, body)
    token.modify_index = core.state.next_index()
    core.state.bump("acl-tokens", token.modify_index)
    return ok_json(token.to_json(core.acl.policies))


async def _token_clone(request: web.Request, core: Core, accessor: str) -> web.Response:
    """``PUT /v1/acl/token/<accessor>/clone``: the same policies and locality, new IDs and the
    given description; an unknown accessor is ``ACL not found``."""
    body = await read_object(request, "structs.ACLToken", "Token decoding failed")
    _enabled(request, WRITE)
    source = core.acl.by_accessor(accessor)
    if source is None:
        raise ConsulError(403, "ACL not found")
    idx = core.state.next_index()
    token = Token(
        accessor=str(uuid.uuid4()),
        secret=str(uuid.uuid4()),
        description=body.text("Description"),
        policy_ids=list(source.policy_ids),
        local=source.local,
        create_time=now_text(),
        create_index=idx,
        modify_index=idx,
    )
    core.acl.tokens[token.secret] = token
    core.state.bump("acl-tokens", idx)
    return ok_json(token.to_json(core.acl.policies))


def _can_see_secret(request: web.Request) -> bool:
    # ACL.TokenRead redacts the secret for tokens with acl:read but not acl:write.
    authz = authorizer(request)
    return authz is None or authz.scalar("acl") >= WRITE


async def token_list(request: web.Request) -> web.Response:
    core = core_of(request)
    if not core.acl.enabled:
        raise ConsulError(401, "ACL support disabled")
    parse_query_options(request, core)
    _enabled(request, READ)
    out = []
    for token in sorted(core.acl.tokens.values(), key=lambda t: t.create_index):
        item = token.to_json(core.acl.policies, show_secret=False)
        out.append(item)
    return ok_json(out)
