"""What every Consul HTTP endpoint shares: errors, query options, metadata headers, blocking.

Consul's ``agent/http.go`` parses ``index``/``wait``/``stale``/``consistent`` the same way for
every read, writes plain-text errors, and stamps reads with ``X-Consul-Index`` (never 0),
``X-Consul-KnownLeader`` and ``X-Consul-LastContact``. Its ``blockingquery`` package then loops:
run the query, return if the index moved past ``index``, else park on the watch set until a
change or the (jittered) timeout. Handlers here get the same behaviour from one place.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

if TYPE_CHECKING:
    from devstack.consul.core import Core

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
JSON = "application/json"


class ConsulError(Exception):
    """An error answered with Consul's status code and plain-text body."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def bad_request(text: str) -> ConsulError:
    return ConsulError(400, text)


def server_error(text: str) -> ConsulError:
    return ConsulError(500, text)


def permission_denied(accessor: str = "", permission: str = "", resource: str = "") -> ConsulError:
    if accessor and permission:
        return ConsulError(
            403,
            f"Permission denied: token with AccessorID '{accessor}' lacks permission "
            f"'{permission}' on \"{resource}\"",
        )
    return ConsulError(403, "Permission denied")


# -- Go durations -------------------------------------------------------------------------------

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse Go's ``time.ParseDuration`` syntax (``1h2m0.5s``, ``-3ms``, ``0``) into seconds."""
    s = text.strip()
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Format like Go's ``Duration.String()``: ``15s``, ``1m0s``, ``24h0m0s``, ``150ms``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    neg = ns < 0
    ns = abs(ns)
    if ns < 1_000_000_000:
        if ns < 1_000:
            out = f"{ns}ns"
        elif ns < 1_000_000:
            out = _trim(ns / 1_000) + "µs"
        else:
            out = _trim(ns / 1_000_000) + "ms"
    else:
        hours, rem = divmod(ns, 3_600_000_000_000)
        minutes, rem = divmod(rem, 60_000_000_000)
        secs = _trim(rem / 1e9)
        if hours:
            out = f"{hours}h{minutes}m{secs}s"
        elif minutes:
            out = f"{minutes}m{secs}s"
        else:
            out = f"{secs}s"
    return "-" + out if neg else out


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_uint(text: str) -> int:
    """``strconv.ParseUint(text, 10, 64)`` with Go's error text."""
    if not text.isdigit() or not text.isascii():
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value >= 1 << 64:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


# -- JSON in and out ----------------------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def norm(key: str) -> str:
    """Consul decodes bodies case-insensitively and accepts snake_case aliases."""
    return key.replace("_", "").replace("-", "").lower()


class CI:
    """A JSON object read the way Consul's decoder reads it: keys match case-insensitively."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.raw = data
        self._map = {norm(k): v for k, v in data.items()}

    def has(self, *names: str) -> bool:
        return any(norm(n) in self._map for n in names)

    def get(self, *names: str, default: Any = None) -> Any:
        for n in names:
            value = self._map.get(norm(n))
            if value is not None:
                return value
        return default

    def text(self, *names: str, default: str = "") -> str:
        value = self.get(*names)
        if value is None:
            return default
        if not isinstance(value, str):
            raise bad_request(f"Request decode failed: {names[0]} must be a string")
        return value

    def obj(self, *names: str) -> CI | None:
        value = self.get(*names)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise bad_request(f"Request decode failed: {names[0]} must be an object")
        return CI(value)


async def read_json(request: web.Request, prefix: str = "Request decode failed") -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"{prefix}: {exc}") from exc


async def read_object(request: web.Request, prefix: str = "Request decode failed") -> CI:
    data = await read_json(request, prefix)
    if data is None:
        return CI({})
    if not isinstance(data, dict):
        raise bad_request(f"{prefix}: expected a JSON object")
    return CI(data)


# -- query options and metadata -----------------------------------------------------------------


@dataclass(slots=True)
class QueryOptions:
    min_index: int = 0
    wait: float = DEFAULT_WAIT
    stale: bool = False
    consistent: bool = False
    filter: str = ""
    pretty: bool = False


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
    dc = q.get("dc")
    if dc and dc != core.config.datacenter:
        raise server_error("No path to datacenter")
    return opts


@dataclass(slots=True)
class Result:
    """One run of a read: its index, its body, and whether the query found nothing."""

    index: int
    body: Any = None
    not_found: bool = False
    status: int = 200
    filtered: bool = False
    raw: bytes | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


def meta_headers(core: Core, opts: QueryOptions | None, index: int | None) -> dict[str, str]:
    headers = {
        "X-Consul-KnownLeader": "false" if core.faults.no_leader else "true",
        "X-Consul-LastContact": "0",
    }
    if opts is not None:
        headers["X-Consul-Effective-Consistency"] = (
            "stale" if opts.stale else "consistent" if opts.consistent else "leader"
        )
    if index is not None:
        headers["X-Consul-Index"] = str(index) if index > 0 else "1"
    return headers


class Prewritten(web.StreamResponse):
    """A response already written to the socket in one piece; aiohttp only closes the books.

    A write under a watched prefix can wake a thousand parked reads at once. Each then needs the
    same bytes on its own connection, and aiohttp's per-response machinery (header objects,
    payload writer, three writes) costs more than the socket send itself. The hot read path
    therefore writes status line, headers and body with one ``transport.write`` and hands
    aiohttp a response that is already finished.
    """

    def __init__(self, status: int, keep_alive: bool) -> None:
        super().__init__(status=status)
        self._keep_alive = keep_alive
        self._eof_sent = True


_REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found"}


def _write_whole(
    request: web.Request, status: int, headers: dict[str, str], body: bytes
) -> web.StreamResponse | None:
    """Write the response in one piece when the connection allows it; None otherwise."""
    transport = request.transport
    if (
        request.method != "GET"
        or request.version != HttpVersion11
        or not request.keep_alive
        or status not in _REASONS
        or transport is None
        or transport.is_closing()
    ):
        return None
    head = [f"HTTP/1.1 {status} {_REASONS[status]}"]
    head.extend(f"{name}: {value}" for name, value in headers.items())
    head.append(f"Content-Length: {len(body)}")
    head.append(f"Date: {rfc822_formatted_time()}")
    head.append(f"Server: {SERVER_SOFTWARE}")
    transport.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
    return Prewritten(status, keep_alive=True)


def respond(
    core: Core,
    result: Result,
    opts: QueryOptions | None,
    *,
    token_sent: bool = False,
    index: bool = True,
    request: web.Request | None = None,
) -> web.StreamResponse:
    headers = meta_headers(core, opts, result.index if index else None)
    if result.filtered and token_sent:
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    if result.extra_headers:
        headers.update(result.extra_headers)
    if result.raw is not None:
        body = result.raw
    elif result.status == 404:
        body = b""
    elif opts is not None and opts.pretty:
        body = json.dumps(result.body, indent=4, ensure_ascii=False).encode() + b"\n"
    else:
        # Encoded once per result, so parked queries sharing a cached result share the bytes.
        body = result.raw = dumps(result.body)
    headers.setdefault("Content-Type", JSON)
    if request is not None:
        whole = _write_whole(request, result.status, headers, body)
        if whole is not None:
            return whole
    return web.Response(body=body, status=result.status, headers=headers)


def ok_json(obj: Any) -> web.Response:
    return web.Response(body=dumps(obj), content_type=JSON)


def ok_empty() -> web.Response:
    return web.Response(body=b"")


async def blocking(
    core: Core,
    opts: QueryOptions,
    run: Callable[[], Result],
    topics: Iterable[str] = (),
    prefixes: Iterable[str] = (),
) -> Result:
    """Consul's ``blockingquery.Query`` loop over an in-memory watch set."""
    core.require_leader(opts)
    result = run()
    min_index = opts.min_index
    if min_index == 0:
        return result
    topics = tuple(topics)
    prefixes = tuple(prefixes)
    loop = asyncio.get_running_loop()
    timeout = opts.wait + random.uniform(0, opts.wait / 16)
    deadline = loop.time() + timeout
    not_found = result.not_found
    watches = core.state.watches
    restores = core.restores
    while result.index <= min_index:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        fut: asyncio.Future[None] = loop.create_future()
        watches.add(fut, topics, prefixes)
        handle = loop.call_later(remaining, _expire, fut)
        try:
            await fut
        finally:
            handle.cancel()
            watches.remove(fut, topics, prefixes)
        if core.restores != restores:
            # The store was replaced (snapshot restore): return whatever is there now.
            return run()
        core.require_leader(opts)
        result = run()
        if result.not_found:
            if not_found:
                # Still nothing there: an unrelated write must not end the wait.
                min_index = max(min_index, result.index)
            not_found = True
    return result


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
