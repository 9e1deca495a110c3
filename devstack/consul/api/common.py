"""What every handler of the HTTP API shares: the agent it serves, the request's token, its
query options and body, and the small success responses.

Consul's ``agent/http.go`` resolves the token (``?token=``, ``X-Consul-Token``, ``Authorization:
Bearer``), parses ``index``/``wait``/``stale``/``consistent``/``dc`` the same way for every
endpoint and decodes JSON bodies case-insensitively; handlers get all of that from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from devstack.consul.acl import Authorizer
from devstack.consul.api.parking import Parking
from devstack.consul.bexpr import apply_filter
from devstack.consul.core import Core
from devstack.consul.encoding import CI, dumps, parse_duration, parse_uint
from devstack.consul.errors import ConsulError, bad_request, permission_denied
from devstack.consul.gojson import GoJSONError, decode, unmarshal_type_error

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
JSON = "application/json"

CORE_KEY = web.AppKey("consul_core", Core)
PARKING_KEY = web.AppKey("consul_parking", Parking)
AUTHZ_KEY = web.RequestKey("consul_authz", Authorizer)


def core_of(request: web.Request) -> Core:
    return request.app[CORE_KEY]


# -- the request's token --------------------------------------------------------------------------


def request_token(request: web.Request) -> str:
    """The secret a request carries, in Consul's order of precedence."""
    token = request.query.get("token")
    if token:
        return token
    token = request.headers.get("X-Consul-Token", "")
    if token:
        return token
    auth = request.headers.get("Authorization", "")
    parts = auth.split()
    if len(parts) >= 2 and parts[0].lower() == "bearer":
        return parts[1]
    return ""


def authorizer(request: web.Request) -> Authorizer | None:
    """The token's authorizer (``None`` with ACLs off); an unknown secret is ``ACL not found``."""
    core = core_of(request)
    if not core.acl.enabled:
        return None
    cached = request.get(AUTHZ_KEY)
    if cached is not None:
        return cached
    try:
        authz = core.acl.authorizer(request_token(request))
    except LookupError as exc:
        raise ConsulError(403, "ACL not found") from exc
    if authz is not None:
        request[AUTHZ_KEY] = authz
    return authz


def token_sent(request: web.Request) -> bool:
    # Only consulted for the filtered-by-ACLs header, which needs ACLs on.
    return core_of(request).acl.enabled and bool(request_token(request))


def require(request: web.Request, resource: str, name: str, need: int) -> None:
    authz = authorizer(request)
    if authz is None or authz.allowed(resource, name, need):
        return
    raise permission_denied(authz.accessor, f"{resource}:{'write' if need >= 2 else 'read'}", name)


def require_scalar(request: web.Request, name: str, need: int) -> None:
    authz = authorizer(request)
    if authz is None or authz.scalar(name) >= need:
        return
    raise permission_denied(authz.accessor, f"{name}:{'write' if need >= 2 else 'read'}", "")


def can_read(request: web.Request, resource: str, name: str) -> bool:
    authz = authorizer(request)
    return authz is None or authz.allowed(resource, name, 1)


def can_read_service(request: web.Request, name: str) -> bool:
    return can_read(request, "service", name)


def can_read_node(request: web.Request, name: str) -> bool:
    return can_read(request, "node", name)


def node_meta_filter(request: web.Request) -> dict[str, str]:
    """``parseMetaFilter``: each ``node-meta=key:value`` (no colon: an empty value)."""
    meta: dict[str, str] = {}
    for raw in request.query.getall("node-meta", []):
        key, _, value = raw.partition(":")
        meta[key] = value
    return meta


def satisfies_meta(meta: dict[str, str], wanted: dict[str, str]) -> bool:
    """``SatisfiesMetaFilters``: every wanted key present with exactly that value."""
    return all(k in meta and meta[k] == v for k, v in wanted.items())


def filtered(result: list[Any], opts_filter: str) -> list[Any]:
    """``?filter=`` over a list read, after the ACL filtering."""
    return apply_filter(result, opts_filter) if opts_filter else result


# -- bodies ---------------------------------------------------------------------------------------


async def read_json(request: web.Request, prefix: str = "Request decode failed") -> Any:
    """The body's first JSON value as Go's decoder reads it; an empty body is ``EOF``."""
    raw = await request.read()
    try:
        return decode(raw)
    except GoJSONError as exc:
        raise bad_request(f"{prefix}: {exc}") from exc


async def read_object(
    request: web.Request, type_name: str, prefix: str = "Request decode failed"
) -> CI:
    """A JSON object body decoded into the Go struct ``type_name``; an empty body is EOF."""
    data = await read_json(request, prefix)
    if data is None:
        return CI({})
    if not isinstance(data, dict):
        raise bad_request(f"{prefix}: {unmarshal_type_error(data, '', '', type_name)}")
    return CI(data)


# -- query options --------------------------------------------------------------------------------


@dataclass(slots=True)
class QueryOptions:
    min_index: int = 0
    wait: float = DEFAULT_WAIT
    stale: bool = False
    consistent: bool = False
    filter: str = ""
    pretty: bool = False
    datacenter: str = ""


def parse_query_options(request: web.Request, core: Core) -> QueryOptions:
    q = request.query
    opts = QueryOptions()
    if "stale" in q and "consistent" in q:
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    opts.stale = "stale" in q
    opts.consistent = "consistent" in q
    opts.pretty = "pretty" in q
    opts.filter = q.get("filter", "")
    if "index" in q:
        try:
            opts.min_index = parse_uint(q["index"])
        except ValueError as exc:
            raise bad_request("Invalid index") from exc
        if "wait" in q:
            try:
                wait = parse_duration(q["wait"])
            except ValueError as exc:
                raise bad_request("Invalid wait time") from exc
            opts.wait = wait if wait > 0 else DEFAULT_WAIT
        opts.wait = min(opts.wait, MAX_WAIT)
    elif "wait" in q:
        try:
            parse_duration(q["wait"])
        except ValueError as exc:
            raise bad_request("Invalid wait time") from exc
    # An unknown datacenter fails later, when the RPC would be forwarded (``reads.forward``).
    opts.datacenter = q.get("dc", "")
    return opts


# -- small answers --------------------------------------------------------------------------------


def wrapped_headers(core: Core) -> dict[str, str]:
    """Headers every registered endpoint sends (``wrap()`` and gziphandler)."""
    return {"Vary": "Accept-Encoding", "X-Consul-Default-ACL-Policy": core.acl.default_name}


def ok_json(obj: Any) -> web.Response:
    return web.Response(body=dumps(obj), content_type=JSON)


def ok_empty() -> web.Response:
    return web.Response(body=b"")
