"""What every Nomad HTTP handler shares: responses, query parameters, filters, blocking reads.

Conventions copied from ``command/agent/http.go``: writes accept PUT or POST, another method is
405 ``Invalid method``; errors are ``text/plain`` bodies holding only the message; reads carry
``X-Nomad-Index``/``X-Nomad-KnownLeader``/``X-Nomad-LastContact`` and block on
``?index=&wait=`` with each endpoint's own index rule (:meth:`APIBase.blocking`).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from devstack.nomad.aclpolicy import ACL
from devstack.nomad.errors import NomadError
from devstack.nomad.server import NomadServer
from devstack.nomad.util import MINUTE, SECOND, parse_go_duration

# The caller's token (None: anonymous) and ACL, set per request when ACLs are enabled; the
# handler runs in the middleware's task, so a context variable carries it.
CALLER: contextvars.ContextVar[tuple[dict[str, Any] | None, ACL]] = contextvars.ContextVar(
    "nomad_caller"
)
READ = ("GET",)
WRITE = ("PUT", "POST")
MAX_WAIT = 10 * MINUTE
DEFAULT_WAIT = 5 * MINUTE
# Paths readable without a token even when ACLs are enabled.
PUBLIC = {"/v1/status/leader", "/v1/status/peers", "/v1/agent/health", "/v1/regions"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_response(obj: Any, index: int | None = None, status: int = 200) -> web.Response:
    headers = {}
    if index is not None:
        headers = {
            "X-Nomad-Index": str(max(index, 1)),
            "X-Nomad-KnownLeader": "true",
            "X-Nomad-LastContact": "0",
        }
    return web.Response(
        body=dumps(obj), status=status, content_type="application/json", headers=headers
    )


def text_response(status: int, message: str, index: int | None = None) -> web.Response:
    headers = {}
    if index is not None:
        headers = {
            "X-Nomad-Index": str(max(index, 1)),
            "X-Nomad-KnownLeader": "true",
            "X-Nomad-LastContact": "0",
        }
    return web.Response(text=message, status=status, content_type="text/plain", headers=headers)


def methods(request: web.Request, allowed: tuple[str, ...]) -> None:
    if request.method not in allowed:
        raise NomadError(405, "Invalid method")


def bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw == "":
        return True
    lowered = raw.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise NomadError(
        500,
        f'Failed to parse value of "{name}" ({raw}) as a bool: strconv.ParseBool: '
        f'parsing "{raw}": invalid syntax',
    )


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise NomadError(400, "Request body is empty")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise NomadError(400, "invalid character in JSON input") from exc
    except json.JSONDecodeError as exc:
        ch = exc.doc[exc.pos : exc.pos + 1] if exc.pos < len(exc.doc) else ""
        if not ch:
            raise NomadError(400, "unexpected EOF") from exc
        raise NomadError(400, f"invalid character {ch!r} looking for beginning of value") from exc


def query_namespace(request: web.Request) -> str:
    return request.query.get("namespace") or "default"


def ns_match(request: web.Request, ns: str) -> bool:
    want = query_namespace(request)
    return want == "*" or want == ns


# --- go-bexpr subset for ?filter= ------------------------------------------------------------

_CLAUSE = re.compile(
    r"^\s*(?:(?P<sel>[A-Za-z_][\w.]*)\s*(?P<op>==|!=|contains|not contains|matches)\s*"
    r'"(?P<val>(?:[^"\\]|\\.)*)"|"(?P<ival>(?:[^"\\]|\\.)*)"\s*(?P<iop>in|not in)\s*'
    r"(?P<isel>[A-Za-z_][\w.]*)|(?P<esel>[A-Za-z_][\w.]*)\s*(?P<eop>is empty|is not empty))\s*$"
)


def _select(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
    return obj


def compile_filter(expr: str) -> Callable[[dict[str, Any]], bool]:
    """A small subset of go-bexpr: clauses joined by ``and`` / ``or`` (no parentheses)."""
    alternatives = []
    for disj in re.split(r"\s+or\s+", expr.strip()):
        clauses = []
        for part in re.split(r"\s+and\s+", disj):
            m = _CLAUSE.match(part)
            if m is None:
                raise NomadError(400, f"failed to read filter expression: {expr}")
            clauses.append(m)
        alternatives.append(clauses)

    def matches(m: re.Match[str], obj: dict[str, Any]) -> bool:
        if m.group("sel"):
            value = _select(obj, m.group("sel"))
            want = m.group("val").replace('\\"', '"')
            op = m.group("op")
            if op == "==":
                return (
                    str(value) == want
                    if not isinstance(value, bool)
                    else str(value).lower() == want
                )
            if op == "!=":
                return str(value) != want
            if op == "matches":
                return isinstance(value, str) and re.search(want, value) is not None
            has = want in value if isinstance(value, (list, str, dict)) else False
            return has if op == "contains" else not has
        if m.group("isel"):
            value = _select(obj, m.group("isel"))
            want = m.group("ival").replace('\\"', '"')
            has = want in value if isinstance(value, (list, str, dict)) else False
            return has if m.group("iop") == "in" else not has
        value = _select(obj, m.group("esel"))
        empty = not value
        return empty if m.group("eop") == "is empty" else not empty

    return lambda obj: any(all(matches(m, obj) for m in cl) for cl in alternatives)


def paginate(
    request: web.Request, items: list[dict[str, Any]], key: str = "ID"
) -> tuple[list, str]:
    if request.query.get("filter"):
        keep = compile_filter(request.query["filter"])
        items = [i for i in items if keep(i)]
    if bool_param(request, "reverse"):
        items = list(reversed(items))
    token = request.query.get("next_token", "")
    if token:
        reverse = bool_param(request, "reverse")
        items = [i for i in items if (str(i[key]) <= token if reverse else str(i[key]) >= token)]
    per_page = request.query.get("per_page", "")
    if per_page:
        try:
            n = int(per_page)
        except ValueError as exc:
            raise NomadError(400, "Invalid per_page") from exc
        if 0 < n < len(items):
            return items[:n], str(items[n][key])
    return items, ""


def request_token(request: web.Request) -> str:
    """The caller's token: ``X-Nomad-Token``, or ``Authorization: Bearer``."""
    token = request.headers.get("X-Nomad-Token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
    return token


class APIBase:
    """The server a group of handlers serves, and the blocking-query loop they share."""

    def __init__(self, cluster: NomadServer) -> None:
        self.cluster = cluster
        self.state = cluster.state

    async def blocking(
        self, request: web.Request, compute: Callable[[], tuple[int, Any]]
    ) -> web.Response:
        """Answer now, or once ``compute``'s index passes ``?index=`` (until ``?wait=``)."""
        q = request.query
        min_index = 0
        if "index" in q:
            try:
                min_index = int(q["index"])
                if min_index < 0:
                    raise ValueError
            except ValueError as exc:
                raise NomadError(400, "Invalid index") from exc
        wait = DEFAULT_WAIT
        if "wait" in q:
            try:
                wait = parse_go_duration(q["wait"])
            except ValueError as exc:
                raise NomadError(400, "Invalid wait time") from exc
            wait = min(max(wait, 0), MAX_WAIT)
        index, payload = compute()
        if min_index > 0 and index <= min_index:
            loop = asyncio.get_running_loop()
            seconds = wait / SECOND
            deadline = loop.time() + seconds + random.uniform(0, seconds / 16)
            while index <= min_index:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.cluster.running:
                    break
                await self.state.wait_change(remaining)
                index, payload = compute()
        if isinstance(payload, NomadError):
            return text_response(payload.status, payload.message, index)
        return json_response(payload, index)

    async def _page(self, request: web.Request, resp: web.Response) -> web.Response:
        if not any(k in request.query for k in ("filter", "per_page", "next_token", "reverse")):
            return resp
        if resp.status != 200 or resp.body is None:
            return resp
        assert isinstance(resp.body, bytes)
        items, token = paginate(request, json.loads(resp.body))
        out = json_response(items, int(resp.headers["X-Nomad-Index"]))
        if token:
            out.headers["X-Nomad-NextToken"] = token
        return out

    @staticmethod
    def _public(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k != "_owner"}
