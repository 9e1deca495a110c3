"""The Consul client: py-consul's endpoint knowledge over one pooled ``httpx.AsyncClient``.

py-consul knows every endpoint's parameters and response quirks, but its asyncio flavour is built
on aiohttp with no read timeouts, forgets the ACL token on some endpoints (``/v1/txn``,
``/v1/status/leader``) and reports errors as its own exceptions with the status code folded into
a message. So py-consul is used for what it is good at (building requests, decoding responses)
through :class:`HttpxTransport`, a ``consul.base.HTTPClient`` on httpx, and everything the
framework calls goes through :class:`ConsulClient`, a small typed facade that

* returns frozen dataclasses (:class:`KVEntry`, :class:`ServiceInstance`, ...), never raw JSON;
* gives each long poll a read timeout of ``wait + wait/16 + margin`` and short reads a short one;
* retries idempotent non-blocking reads a few times (long polls and writes never);
* translates every py-consul and httpx exception into :mod:`reconciler.clients.errors`.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import consul.base
import consul.callback
import consul.exceptions
import httpx

from reconciler.clients._common import (
    DEFAULT_WAIT,
    blocking_read_timeout,
    format_wait,
    parse_go_duration,
    retry_read,
)
from reconciler.clients.config import ConsulConfig
from reconciler.clients.errors import (
    BadRequest,
    ClientError,
    NotFound,
    Timeout,
    TooLarge,
    TransactionRolledBack,
    Unavailable,
    error_for_status,
)
from reconciler.clients.jsonstream import ArrayDecoder, StreamDecodeError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Consul's per-value limit (kv_max_value_size) and per-transaction operation limit (since 1.14).
MAX_VALUE_SIZE = 512 * 1024
MAX_TXN_OPS = 128


# --------------------------------------------------------------------------- response metadata


@dataclass
class ResponseInfo:
    """What the transport saw of the last HTTP response of one facade call."""

    status: int | None = None
    body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


# One slot per facade call; a contextvar keeps concurrent calls (many long polls share one
# client) from seeing each other's responses.
_RESPONSE: contextvars.ContextVar[ResponseInfo | None] = contextvars.ContextVar(
    "consul_response", default=None
)


# --------------------------------------------------------------------------- transport


class HttpxTransport(consul.base.HTTPClient):  # type: ignore[misc]
    """py-consul's HTTP seam implemented with one shared ``httpx.AsyncClient``.

    Each method returns a coroutine, as py-consul's aiohttp flavour does, so every py-consul
    endpoint call becomes awaitable. The read timeout of a request is derived from its ``wait``
    parameter when it is a blocking query (it carries ``index``), else it is ``timeout``.

    Two connection pools: blocking queries go to ``long_http`` (each holds a connection for up
    to the wait time), everything else (writes, session renewals, short reads) to ``http``. A
    long poll can therefore never make a write or a renewal wait for a connection, and the short
    pool stays small (``short_connections``): the connections a process holds are its long
    polls (one per declared watch, never per user) plus that small pool. Passing ``http`` uses
    that one client for both (tests and benchmarks that hook requests).
    """

    def __init__(
        self,
        config: ConsulConfig,
        *,
        timeout: float = 10.0,
        blocking_margin: float = 5.0,
        short_connections: int = 5,
        long_connections: int = 64,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(config.host, config.port, config.scheme, config.tls.verify, None)
        self._token = config.token
        self._timeout = timeout
        self._margin = blocking_margin
        self._extensions: dict[str, Any] = {}
        if config.tls.server_name:
            self._extensions["sni_hostname"] = config.tls.server_name
        self.known_leader: bool | None = None
        if http is not None:
            self.http = self.long_http = http
        else:
            verify = config.tls.ssl_context() if config.scheme == "https" else True
            encoding = {} if config.compress else {"Accept-Encoding": "identity"}
            self.http = httpx.AsyncClient(
                verify=verify,
                headers=encoding,
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(
                    max_connections=short_connections, max_keepalive_connections=short_connections
                ),
                trust_env=False,
            )
            self.long_http = httpx.AsyncClient(
                verify=verify,
                headers=encoding,
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(
                    max_connections=long_connections, max_keepalive_connections=long_connections
                ),
                trust_env=False,
            )

    def read_timeout(self, params: Sequence[tuple[str, Any]] | None) -> float:
        found = dict(params or ())
        if not found.get("index"):
            return self._timeout
        wait = DEFAULT_WAIT
        if found.get("wait"):
            try:
                wait = parse_go_duration(str(found["wait"]))
            except ValueError:
                wait = DEFAULT_WAIT
        return blocking_read_timeout(wait, self._margin)

    async def _request(
        self,
        callback: Callable[[consul.base.Response], Any],
        method: str,
        path: str,
        params: Sequence[tuple[str, Any]] | None,
        data: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        uri = self.uri(path, list(params) if params else None)
        send_headers = dict(headers or {})
        if self._token and "X-Consul-Token" not in send_headers:
            send_headers["X-Consul-Token"] = self._token
        content = data.encode() if isinstance(data, str) else data
        read = self.read_timeout(params)
        timeout = httpx.Timeout(self._timeout, read=read)
        blocking = any(name == "index" and value for name, value in params or ())
        client = self.long_http if blocking else self.http
        resp = await client.request(
            method,
            uri,
            content=content or None,
            headers=send_headers,
            timeout=timeout,
            extensions=self._extensions,
        )
        body: str | bytes = resp.content if raw else resp.text
        leader = resp.headers.get("X-Consul-KnownLeader")
        if leader is not None:
            self.known_leader = leader == "true"
        slot = _RESPONSE.get()
        if slot is not None:
            slot.status = resp.status_code
            slot.body = resp.text if raw else str(body)
            slot.headers = resp.headers
        return callback(consul.base.Response(resp.status_code, resp.headers, body))

    async def get_array(
        self,
        path: str,
        params: Sequence[tuple[str, Any]],
        convert: Callable[[Any], T],
        *,
        chunk_size: int = 64 * 1024,
    ) -> tuple[str, list[T]]:
        """GET a JSON array answer, decoding and converting it element by element as the body
        streams in (see :mod:`reconciler.clients.jsonstream`): the whole body is never held as
        text nor as decoded JSON. Returns ``(X-Consul-Index, items)``; a 404 is ``[]``.

        Errors are raised as py-consul's, as its ``CB.json(index=True)`` would, so the facade
        translates them the same way."""
        uri = self.uri(path, list(params) if params else None)
        send_headers = {"X-Consul-Token": self._token} if self._token else {}
        timeout = httpx.Timeout(self._timeout, read=self.read_timeout(params))
        blocking = any(name == "index" and value for name, value in params or ())
        client = self.long_http if blocking else self.http
        async with client.stream(
            "GET", uri, headers=send_headers, timeout=timeout, extensions=self._extensions
        ) as resp:
            leader = resp.headers.get("X-Consul-KnownLeader")
            if leader is not None:
                self.known_leader = leader == "true"
            slot = _RESPONSE.get()
            if slot is not None:
                slot.status = resp.status_code
                slot.headers = resp.headers
            items: list[T] = []
            if resp.status_code >= 400:
                body = (await resp.aread()).decode(errors="replace")
                if slot is not None:
                    slot.body = body
                answer = consul.base.Response(resp.status_code, resp.headers, body)
                consul.callback.CB._status(answer)
            elif resp.status_code != 404:
                decoder = ArrayDecoder(convert)
                try:
                    async for chunk in resp.aiter_bytes(chunk_size):
                        decoder.feed(chunk)
                    items = decoder.close()
                except StreamDecodeError as exc:
                    raise consul.exceptions.ConsulException(
                        f"Failed to decode JSON of {path}: {exc}"
                    ) from exc
            index = resp.headers.get("X-Consul-Index")
            if index is None:
                raise consul.exceptions.ConsulException(f"Missing index header: {resp.headers}")
            return index, items

    def get(
        self,
        callback: Callable[[consul.base.Response], Any],
        path: str,
        params: Sequence[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        raw: bool = False,
    ) -> Awaitable[Any]:
        return self._request(callback, "GET", path, params, headers=headers, raw=raw)

    def put(
        self,
        callback: Callable[[consul.base.Response], Any],
        path: str,
        params: Sequence[tuple[str, Any]] | None = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> Awaitable[Any]:
        return self._request(callback, "PUT", path, params, data=data, headers=headers)

    def delete(
        self,
        callback: Callable[[consul.base.Response], Any],
        path: str,
        params: Sequence[tuple[str, Any]] | None = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> Awaitable[Any]:
        return self._request(callback, "DELETE", path, params, data=data, headers=headers)

    def post(
        self,
        callback: Callable[[consul.base.Response], Any],
        path: str,
        params: Sequence[tuple[str, Any]] | None = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> Awaitable[Any]:
        return self._request(callback, "POST", path, params, data=data, headers=headers)

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.long_http is not self.http:
            await self.long_http.aclose()

    def close(self) -> Awaitable[None]:
        return self.aclose()


class PyConsul(consul.base.Consul):  # type: ignore[misc]
    """py-consul's API object wired to :class:`HttpxTransport` and to our configuration only.

    py-consul's constructor reads ``CONSUL_HTTP_*`` itself, and its ``CONSUL_HTTP_TOKEN`` even
    overrides an explicit token; everything is passed explicitly and the token re-set, so
    :class:`ConsulConfig` stays the one place the environment is read.
    """

    def __init__(self, config: ConsulConfig, transport: HttpxTransport) -> None:
        self._transport = transport
        super().__init__(
            host=config.host,
            port=config.port,
            scheme=config.scheme,
            verify=config.tls.verify,
            dc=config.datacenter,
        )
        self.token = config.token

    def http_connect(
        self, host: str, port: int, scheme: str, verify: bool | str = True, cert: Any = None
    ) -> HttpxTransport:
        return self._transport


# --------------------------------------------------------------------------- typed results


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One KV pair. ``value`` is ``None`` for an empty value, as Consul returns it."""

    key: str
    value: bytes | None
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0
    session: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any], *, value_is_base64: bool = False) -> KVEntry:
        value = raw.get("Value")
        if isinstance(value, str):
            value = base64.b64decode(value) if value_is_base64 else value.encode()
        return cls(
            key=str(raw["Key"]),
            value=value if value else None,
            flags=int(raw.get("Flags") or 0),
            create_index=int(raw.get("CreateIndex") or 0),
            modify_index=int(raw.get("ModifyIndex") or 0),
            lock_index=int(raw.get("LockIndex") or 0),
            session=raw.get("Session") or None,
        )

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (``""`` when empty)."""
        return (self.value or b"").decode()


@dataclass(frozen=True, slots=True)
class KVOp:
    """One KV operation of a transaction (``Verb`` as Consul spells it: ``cas``, ``check-session``).

    Build with the class methods, which name the verbs the framework uses.
    """

    verb: str
    key: str
    value: bytes | None = None
    flags: int | None = None
    index: int | None = None
    session: str | None = None

    def to_api(self) -> dict[str, Any]:
        op: dict[str, Any] = {"Verb": self.verb, "Key": self.key}
        if self.value is not None:
            op["Value"] = base64.b64encode(self.value).decode()
        if self.flags is not None:
            op["Flags"] = self.flags
        if self.index is not None:
            op["Index"] = self.index
        if self.session is not None:
            op["Session"] = self.session
        return {"KV": op}

    @classmethod
    def set(cls, key: str, value: bytes, *, flags: int | None = None) -> KVOp:
        return cls("set", key, value=value, flags=flags)

    @classmethod
    def cas(cls, key: str, value: bytes, *, index: int, flags: int | None = None) -> KVOp:
        return cls("cas", key, value=value, index=index, flags=flags)

    @classmethod
    def get(cls, key: str) -> KVOp:
        return cls("get", key)

    @classmethod
    def delete(cls, key: str) -> KVOp:
        return cls("delete", key)

    @classmethod
    def delete_tree(cls, prefix: str) -> KVOp:
        return cls("delete-tree", prefix)

    @classmethod
    def delete_cas(cls, key: str, *, index: int) -> KVOp:
        return cls("delete-cas", key, index=index)

    @classmethod
    def check_index(cls, key: str, index: int) -> KVOp:
        return cls("check-index", key, index=index)

    @classmethod
    def check_session(cls, key: str, session: str) -> KVOp:
        return cls("check-session", key, session=session)

    @classmethod
    def check_not_exists(cls, key: str) -> KVOp:
        return cls("check-not-exists", key)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A committed transaction: the entries its ``get``/``set``... operations returned."""

    results: tuple[KVEntry, ...]
    index: int | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    name: str = ""
    node: str = ""
    ttl: str = ""
    lock_delay_ns: int = 0
    behavior: str = "release"
    node_checks: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> SessionInfo:
        checks = raw.get("NodeChecks")
        if checks is None:
            checks = raw.get("Checks") or ()
        return cls(
            id=str(raw["ID"]),
            name=str(raw.get("Name") or ""),
            node=str(raw.get("Node") or ""),
            ttl=str(raw.get("TTL") or ""),
            lock_delay_ns=int(raw.get("LockDelay") or 0),
            behavior=str(raw.get("Behavior") or "release"),
            node_checks=tuple(str(c) for c in checks),
            create_index=int(raw.get("CreateIndex") or 0),
            modify_index=int(raw.get("ModifyIndex") or 0),
        )


_HEALTH_STATES = frozenset({"any", "unknown", "passing", "warning", "critical"})
CheckStatus = Literal["passing", "warning", "critical", "maintenance"]
_SEVERITY: dict[str, int] = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


def aggregate_status(statuses: Iterable[str]) -> CheckStatus:
    """Consul's ``AggregatedStatus``: maintenance > critical > warning > passing."""
    worst: CheckStatus = "passing"
    for status in statuses:
        s: CheckStatus = status if status in _SEVERITY else "critical"  # type: ignore[assignment]
        if _SEVERITY[s] > _SEVERITY[worst]:
            worst = s
    return worst


@dataclass(frozen=True, slots=True)
class HealthCheck:
    check_id: str
    name: str
    status: str
    service_id: str = ""
    # Output changes with every run of some checks; it is not part of an instance's identity.
    output: str = field(default="", compare=False)
    # The Raft index of the check's last write (0: unknown); lets an unchanged check be reused.
    modify_index: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class CheckState:
    """One check from ``/v1/health/state/:state``, with the node and service it belongs to."""

    node: str
    service_name: str
    check: HealthCheck

    @property
    def check_id(self) -> str:
        return self.check.check_id

    @property
    def service_id(self) -> str:
        return self.check.service_id

    @property
    def status(self) -> str:
        return self.check.status

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> CheckState:
        return cls(
            node=_small(str(raw.get("Node") or "")),
            service_name=str(raw.get("ServiceName") or ""),
            check=_check(raw),
        )


CheckKey = tuple[str, str]
"""``(node, check id)``: what identifies a check across ``/v1/health/state`` answers."""


def check_key(state: CheckState) -> CheckKey:
    return state.node, state.check.check_id


def _state_converter(
    known: Mapping[CheckKey, CheckState] | None,
) -> Callable[[Any], CheckState]:
    """One element of ``/v1/health/state/:state`` -> :class:`CheckState`; a check whose
    ``ModifyIndex`` (and status and service) is that of the same check in ``known`` is the known
    object itself, so an answer of N unchanged checks allocates nothing that is kept."""

    def convert(raw: Any) -> CheckState:
        if not isinstance(raw, dict):
            raise StreamDecodeError(f"a health check is not a JSON object: {raw!r:.80}")
        if known:
            old = known.get((raw.get("Node") or "", raw.get("CheckID") or ""))
            if (
                old is not None
                and old.check.modify_index
                and old.check.modify_index == raw.get("ModifyIndex")
                and old.check.status == raw.get("Status")
                and old.check.service_id == (raw.get("ServiceID") or "")
                and old.service_name == (raw.get("ServiceName") or "")
            ):
                return old
        return CheckState.from_api(raw)

    return convert


def _small(text: str) -> str:
    """Intern a string of a small, bounded set (node names, statuses): one object for all."""
    return sys.intern(text) if len(text) <= 64 else text


# Values that many instances carry alike (tags, tag tuples, meta keys, roles, addresses): one
# object for each, from a table that takes the first _SHARED_MAX values seen and then only
# serves them, so its memory is bounded whatever the churn (a value it does not hold is merely
# not shared). 30,000 instances carry ~6 such values each.
_SHARED: dict[Any, Any] = {}
_SHARED_MAX = 16384
_SHARED_LEN = 48


def _shared(value: T) -> T:
    got = _SHARED.get(value)
    if got is not None:
        return got  # type: ignore[no-any-return]
    if len(_SHARED) < _SHARED_MAX:
        _SHARED[value] = value
    return value


def _shared_str(value: Any) -> str:
    text = str(value)
    return _shared(text) if len(text) <= _SHARED_LEN else text


class Meta(Mapping[str, str]):
    """Read-only service meta, stored as one flat ``(k1, v1, k2, v2, ...)`` tuple.

    A dict behind a ``MappingProxyType`` costs ~280 bytes for three entries, this ~130; keys and
    short values are shared between instances. Compares equal to any mapping with the same
    items."""

    __slots__ = ("_flat",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        flat: list[str] = []
        for key, value in sorted((str(k), str(v)) for k, v in pairs):
            flat += (_shared_str(key), _shared_str(value))
        self._flat: tuple[str, ...] = tuple(flat)

    def __getitem__(self, key: str) -> str:
        flat = self._flat
        for i in range(0, len(flat), 2):
            if flat[i] == key:
                return flat[i + 1]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._flat[::2])

    def __len__(self) -> int:
        return len(self._flat) // 2

    def __repr__(self) -> str:
        return f"Meta({dict(self)!r})"


def _check(raw: Mapping[str, Any]) -> HealthCheck:
    try:
        modify_index = int(raw.get("ModifyIndex") or 0)
    except (TypeError, ValueError):
        modify_index = 0
    return HealthCheck(
        check_id=str(raw.get("CheckID") or ""),
        name=str(raw.get("Name") or ""),
        status=_small(str(raw.get("Status") or "critical")),
        service_id=str(raw.get("ServiceID") or ""),
        output=str(raw.get("Output") or ""),
        modify_index=modify_index,
    )


def _check_order(check: HealthCheck) -> tuple[str, str]:
    # Node checks first, then the service's, each by id: the same order whichever endpoint
    # the checks came from, so instances built from different reads compare equal.
    return check.service_id, check.check_id


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """One instance from ``/v1/health/service/:name``, with its checks and aggregated status.

    ``address`` is the service address, or the node's when the service has none (as Consul's own
    DNS interface resolves it).
    """

    node: str
    node_address: str
    service_id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    checks: tuple[HealthCheck, ...]
    status: CheckStatus

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> ServiceInstance:
        """One entry of ``/v1/health/service/:name``."""
        node = raw.get("Node") or {}
        return cls.build(
            str(node.get("Node") or ""),
            str(node.get("Address") or ""),
            raw.get("Service") or {},
            (_check(c) for c in raw.get("Checks") or ()),
        )

    @classmethod
    def build(
        cls,
        node: str,
        node_address: str,
        service: Mapping[str, Any],
        checks: Iterable[HealthCheck],
    ) -> ServiceInstance:
        """An instance from its parts: a catalog service entry, its node and its checks (node
        checks included), as ``/v1/health/service`` would return it."""
        ordered = tuple(sorted(checks, key=_check_order))
        node_address = _shared_str(node_address)
        service_id = str(service.get("ID") or "")
        # The service's checks carry the same id: one string for both.
        service_id = next((c.service_id for c in ordered if c.service_id == service_id), service_id)
        return cls(
            node=_small(node),
            node_address=node_address,
            service_id=service_id,
            service=str(service.get("Service") or ""),
            address=_shared_str(service.get("Address") or node_address),
            port=int(service.get("Port") or 0),
            tags=_shared(tuple(_shared_str(t) for t in service.get("Tags") or ())),
            meta=Meta(service.get("Meta") or {}),
            checks=ordered,
            status=aggregate_status(c.status for c in ordered),
        )

    def with_checks(self, checks: Iterable[HealthCheck]) -> ServiceInstance:
        """The same registration with other checks (a status change seen on the checks alone)."""
        ordered = tuple(sorted(checks, key=_check_order))
        return dataclasses.replace(
            self, checks=ordered, status=aggregate_status(c.status for c in ordered)
        )

    @property
    def passing(self) -> bool:
        return self.status == "passing"


# --------------------------------------------------------------------------- error translation

_BAD_REQUEST_500 = (
    "Missing node registration",
    "Missing check",
    "is in critical state",
    "Invalid Session TTL",
    "Invalid Behavior",
    "No path to datacenter",
    "invalid key name",
    "Invalid flags",
)


def translate_status(status: int | None, body: str | None, *, what: str) -> ClientError:
    """The error of our tree for a Consul HTTP error status and plain-text body."""
    text = (body or "").strip()
    msg = f"{what}: HTTP {status}: {text}" if status is not None else f"{what}: {text}"
    if status is None:
        return Unavailable(msg, status=status, body=body)
    if status == 500 and text.startswith("invalid session"):
        return NotFound(msg, status=status, body=body)
    if status == 500 and any(marker in text for marker in _BAD_REQUEST_500):
        return BadRequest(msg, status=status, body=body)
    return error_for_status(status, msg, body)


def _txn_errors(body: str | None) -> list[tuple[int, str]]:
    try:
        payload = json.loads(body or "")
    except ValueError:
        return []
    errors = payload.get("Errors") if isinstance(payload, dict) else None
    return [(int(e.get("OpIndex", 0)), str(e.get("What", ""))) for e in errors or ()]


# --------------------------------------------------------------------------- facade


def _index(raw: Any) -> int:
    """``X-Consul-Index`` as an int; never below 1, as Consul's own ``setIndex`` guarantees."""
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return 1


def _check_key(key: str) -> None:
    """Refuse keys an HTTP path cannot carry faithfully.

    Keys travel in the URL path, where ``.`` and ``..`` segments are resolved away (by httpx, and
    by a real agent's router): ``in/..`` would silently address ``in``'s parent. Such keys can
    only be made through ``/v1/txn``; they are refused here rather than aliased.
    """
    if key.startswith("/"):
        raise BadRequest(f"Consul key {key!r} must not start with '/'")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise BadRequest(f"Consul key {key!r} has a '.' or '..' segment")


class ConsulReader:
    """A read-only view of a :class:`ConsulClient`: what a reconcile gets as ``ctx.consul``.

    Writes made by a leader-elected controller must be fenced, so its context offers them only
    through ``ctx.kv``; this view has no method that changes Consul at all.
    """

    def __init__(self, client: ConsulClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"ConsulReader({self._client.config.base_url})"

    @property
    def known_leader(self) -> bool | None:
        return self._client.known_leader

    async def kv_get(self, key: str, *, consistent: bool = False) -> tuple[int, KVEntry | None]:
        return await self._client.kv_get(key, consistent=consistent)

    async def kv_list(
        self,
        prefix: str,
        *,
        index: int = 0,
        wait: float | None = None,
        known: Mapping[str, KVEntry] | None = None,
    ) -> tuple[int, list[KVEntry]]:
        return await self._client.kv_list(prefix, index=index, wait=wait, known=known)

    async def kv_keys(self, prefix: str, *, separator: str | None = None) -> list[str]:
        return await self._client.kv_keys(prefix, separator=separator)

    async def health_service(
        self, name: str, *, passing: bool = False, index: int = 0, wait: float | None = None
    ) -> tuple[int, list[ServiceInstance]]:
        return await self._client.health_service(name, passing=passing, index=index, wait=wait)

    async def catalog_nodes(self) -> list[tuple[str, str]]:
        return await self._client.catalog_nodes()

    async def catalog_node(
        self, node: str, *, filter: str | None = None
    ) -> tuple[str, list[Mapping[str, Any]]]:
        return await self._client.catalog_node(node, filter=filter)

    async def health_state(
        self,
        state: str = "any",
        *,
        filter: str | None = None,
        index: int = 0,
        wait: float | None = None,
        known: Mapping[CheckKey, CheckState] | None = None,
    ) -> tuple[int, list[CheckState]]:
        return await self._client.health_state(
            state, filter=filter, index=index, wait=wait, known=known
        )

    async def catalog_services(
        self, *, index: int = 0, wait: float | None = None
    ) -> tuple[int, dict[str, list[str]]]:
        return await self._client.catalog_services(index=index, wait=wait)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        return await self._client.session_info(session_id)

    async def status_leader(self) -> str:
        return await self._client.status_leader()


class ConsulClient:
    """The async Consul API the framework uses.

    Blocking reads take ``index`` (0 = return at once) and ``wait`` in seconds and return
    ``(index, data)``; the caller owns the loop and the index rules. ``known_leader`` is the
    ``X-Consul-KnownLeader`` of the latest response that carried one.
    """

    def __init__(
        self,
        config: ConsulConfig | None = None,
        *,
        timeout: float = 10.0,
        blocking_margin: float = 5.0,
        read_attempts: int = 3,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config or ConsulConfig.from_env()
        self._transport = HttpxTransport(
            self.config, timeout=timeout, blocking_margin=blocking_margin, http=http
        )
        self._api = PyConsul(self.config, self._transport)
        self._read_attempts = read_attempts

    def __repr__(self) -> str:
        return f"ConsulClient({self.config.base_url})"

    @property
    def known_leader(self) -> bool | None:
        return self._transport.known_leader

    async def __aenter__(self) -> ConsulClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # -- plumbing

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one py-consul call, translating every library exception into our tree."""
        info = ResponseInfo()
        token = _RESPONSE.set(info)
        try:
            return await call()
        except consul.exceptions.ConsulException as exc:
            if info.status is None or info.status < 400:
                # A malformed answer (no index header, bad JSON): the server is not well.
                raise Unavailable(f"{what}: {exc}", status=info.status) from exc
            raise translate_status(info.status, info.body or str(exc), what=what) from exc
        except httpx.TimeoutException as exc:
            raise Timeout(f"{what}: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except httpx.InvalidURL as exc:
            raise BadRequest(f"{what}: {exc}") from exc
        finally:
            _RESPONSE.reset(token)

    async def _read(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A non-blocking idempotent read: retried a few times on :class:`Unavailable`."""
        return await retry_read(lambda: self._call(what, call), attempts=self._read_attempts)

    @staticmethod
    def _wait(index: int, wait: float | None) -> tuple[int | None, str | None]:
        if index <= 0:
            return None, None
        return index, format_wait(wait) if wait else None

    # -- KV

    async def kv_get(self, key: str, *, consistent: bool = False) -> tuple[int, KVEntry | None]:
        """One key, now. ``(index, None)`` when it does not exist: block on that index to wait
        for its creation (see :meth:`kv_get_blocking`)."""
        _check_key(key)
        consistency = "consistent" if consistent else None
        index, raw = await self._read(
            f"GET kv/{key}", lambda: self._api.kv.get(key, consistency=consistency)
        )
        return _index(index), KVEntry.from_api(raw) if raw else None

    async def kv_get_blocking(
        self, key: str, *, index: int, wait: float | None = None
    ) -> tuple[int, KVEntry | None]:
        """Long-poll one key: returns when its index passes ``index`` or after ``wait``."""
        _check_key(key)
        idx, w = self._wait(index, wait)
        got, raw = await self._call(
            f"GET kv/{key} (blocking)", lambda: self._api.kv.get(key, index=idx, wait=w)
        )
        return _index(got), KVEntry.from_api(raw) if raw else None

    async def kv_list(
        self,
        prefix: str,
        *,
        index: int = 0,
        wait: float | None = None,
        known: Mapping[str, KVEntry] | None = None,
    ) -> tuple[int, list[KVEntry]]:
        """Every entry under ``prefix`` (a plain string prefix, as Consul matches it).

        With ``index`` > 0 this is a blocking query and is not retried; without, it is.
        ``known`` (the entries of the previous answer, by key) lets an entry whose
        ``ModifyIndex`` has not moved be returned as the same object instead of being decoded
        again: every write to a key moves its ``ModifyIndex``, so a watch of a prefix of N keys
        pays for the keys that changed, not for all N, on each wake.
        """
        _check_key(prefix)
        idx, w = self._wait(index, wait)
        what = f"GET kv/{prefix}?recurse"

        def call() -> Awaitable[Any]:
            return self._api.kv.get(prefix, recurse=True, index=idx, wait=w)  # type: ignore[no-any-return]

        got, raw = await (self._call(what, call) if idx else self._read(what, call))
        if not known:
            return _index(got), [KVEntry.from_api(item) for item in raw or ()]
        entries: list[KVEntry] = []
        for item in raw or ():
            old = known.get(item.get("Key"))
            if old is not None and old.modify_index and old.modify_index == item.get("ModifyIndex"):
                entries.append(old)
            else:
                entries.append(KVEntry.from_api(item))
        return _index(got), entries

    async def kv_keys(self, prefix: str, *, separator: str | None = None) -> list[str]:
        _check_key(prefix)
        _, raw = await self._read(
            f"GET kv/{prefix}?keys",
            lambda: self._api.kv.get(prefix, keys=True, separator=separator),
        )
        return [str(k) for k in raw or ()]

    async def kv_put(
        self,
        key: str,
        value: bytes | str | None,
        *,
        cas: int | None = None,
        flags: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
    ) -> bool:
        """Write one key. ``False`` when a ``cas``/``acquire``/``release`` condition failed.

        Note Consul's rules: a PUT without ``flags`` resets them to 0, and ``release`` replaces
        the value with ``value``.
        """
        _check_key(key)
        data = value.encode() if isinstance(value, str) else value
        if data is not None and len(data) > MAX_VALUE_SIZE:
            raise TooLarge(f"value of {key!r} is {len(data)} bytes (> {MAX_VALUE_SIZE})")
        result = await self._call(
            f"PUT kv/{key}",
            lambda: self._api.kv.put(
                key, data, cas=cas, flags=flags, acquire=acquire, release=release
            ),
        )
        return bool(result)

    async def kv_delete(self, key: str, *, cas: int | None = None, recurse: bool = False) -> bool:
        """Delete a key (or a prefix). ``True`` even when it did not exist, unless ``cas``
        failed."""
        _check_key(key)
        result = await self._call(
            f"DELETE kv/{key}", lambda: self._api.kv.delete(key, recurse=recurse, cas=cas)
        )
        return bool(result)

    # -- transactions

    async def txn(self, ops: Sequence[KVOp]) -> TxnResult:
        """Apply ``ops`` atomically. Rollback raises :class:`TransactionRolledBack` (a
        :class:`Conflict`) listing every failed operation; too many ops raise :class:`TooLarge`."""
        if not ops:
            return TxnResult(results=())
        if len(ops) > MAX_TXN_OPS:
            raise TooLarge(f"transaction has {len(ops)} operations (> {MAX_TXN_OPS})")
        payload = [op.to_api() for op in ops]
        info = ResponseInfo()
        token = _RESPONSE.set(info)
        try:
            raw = await self._api.txn.put(payload)
        except consul.exceptions.ConsulException as exc:
            if info.status == 409:
                errors = _txn_errors(info.body)
                detail = "; ".join(f"op {i}: {what}" for i, what in errors)
                raise TransactionRolledBack(
                    f"transaction rolled back: {detail}", errors=errors, body=info.body
                ) from exc
            raise translate_status(info.status, info.body or str(exc), what="PUT txn") from exc
        except httpx.TimeoutException as exc:
            raise Timeout(f"PUT txn: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"PUT txn: {type(exc).__name__}: {exc}") from exc
        finally:
            _RESPONSE.reset(token)
        results = tuple(
            KVEntry.from_api(r["KV"], value_is_base64=True)
            for r in (raw or {}).get("Results") or ()
            if isinstance(r, dict) and "KV" in r
        )
        header = info.headers.get("X-Consul-Index")
        return TxnResult(results=results, index=_index(header) if header else None)

    # -- sessions

    async def session_create(
        self,
        name: str,
        *,
        ttl: int | None = None,
        lock_delay: int = 15,
        behavior: Literal["release", "delete"] = "release",
        node_checks: Sequence[str] | None = None,
    ) -> str:
        """Create a session; returns its id. ``ttl`` in seconds (10-86400), ``lock_delay`` in
        seconds (0 disables it). ``node_checks=[]`` ties the session to no check at all."""
        if ttl is not None and not 10 <= ttl <= 86400:
            raise ValueError("session ttl must be between 10 and 86400 seconds")
        if lock_delay < 0:
            raise ValueError("lock_delay must be >= 0")
        checks = list(node_checks) if node_checks is not None else None
        session_id = await self._call(
            "PUT session/create",
            lambda: self._api.session.create(
                name=name, ttl=ttl, lock_delay=lock_delay, behavior=behavior, checks=checks
            ),
        )
        return str(session_id)

    async def session_renew(self, session_id: str) -> SessionInfo:
        """Renew a TTL session. :class:`NotFound` when it is gone (expired or destroyed): the
        locks it held are lost. The returned ``ttl`` may be longer than asked for."""
        raw = await self._call(
            f"PUT session/renew/{session_id}", lambda: self._api.session.renew(session_id)
        )
        if not raw:
            raise NotFound(f"session {session_id} not found")
        return SessionInfo.from_api(raw)

    async def session_destroy(self, session_id: str) -> bool:
        result = await self._call(
            f"PUT session/destroy/{session_id}", lambda: self._api.session.destroy(session_id)
        )
        return bool(result)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        _, raw = await self._read(
            f"GET session/info/{session_id}", lambda: self._api.session.info(session_id)
        )
        return SessionInfo.from_api(raw) if raw else None

    # -- catalog and health

    async def health_service(
        self,
        name: str,
        *,
        passing: bool = False,
        index: int = 0,
        wait: float | None = None,
    ) -> tuple[int, list[ServiceInstance]]:
        """Instances of one service with their checks (``[]`` for an unknown service)."""
        idx, w = self._wait(index, wait)
        what = f"GET health/service/{name}"

        def call() -> Awaitable[Any]:
            return self._api.health.service(name, index=idx, wait=w, passing=passing)  # type: ignore[no-any-return]

        got, raw = await (self._call(what, call) if idx else self._read(what, call))
        return _index(got), [ServiceInstance.from_api(item) for item in raw or ()]

    async def catalog_services(
        self, *, index: int = 0, wait: float | None = None
    ) -> tuple[int, dict[str, list[str]]]:
        """Every service name with the union of its tags."""
        idx, w = self._wait(index, wait)
        what = "GET catalog/services"

        def call() -> Awaitable[Any]:
            return self._api.catalog.services(index=idx, wait=w)  # type: ignore[no-any-return]

        got, raw = await (self._call(what, call) if idx else self._read(what, call))
        return _index(got), {str(k): [str(t) for t in v or ()] for k, v in (raw or {}).items()}

    async def catalog_nodes(self) -> list[tuple[str, str]]:
        """Every node as ``(name, address)``."""
        _, raw = await self._read("GET catalog/nodes", lambda: self._api.catalog.nodes())
        return [(str(n.get("Node") or ""), str(n.get("Address") or "")) for n in raw or ()]

    async def catalog_node(
        self, node: str, *, filter: str | None = None
    ) -> tuple[str, list[Mapping[str, Any]]]:
        """The address of ``node`` and every service registered on it (raw catalog entries);
        with ``filter``, only the services that expression selects."""
        _, raw = await self._read(
            f"GET catalog/node/{node}",
            lambda: self._api.catalog.node(node, filter_expr=filter),
        )
        if not raw:
            return "", []
        address = str((raw.get("Node") or {}).get("Address") or "")
        services = raw.get("Services") or {}
        return address, list(services.values() if isinstance(services, dict) else services)

    async def health_state(
        self,
        state: str = "any",
        *,
        filter: str | None = None,
        index: int = 0,
        wait: float | None = None,
        known: Mapping[CheckKey, CheckState] | None = None,
    ) -> tuple[int, list[CheckState]]:
        """Every check in ``state`` (``any``, ``passing``, ``warning``, ``critical``) across the
        datacenter: one long poll watches the health of every service at once.

        The answer is decoded as it streams in, one check at a time, into :class:`CheckState`
        (the 38 MB answer of 30,000 checks is never held whole, as text or as dicts). ``known``
        (the previous answer's states by :func:`check_key`) makes every check whose
        ``ModifyIndex`` has not moved the known object itself."""
        if state not in _HEALTH_STATES:
            raise ValueError(f"health state must be one of {sorted(_HEALTH_STATES)}, not {state!r}")
        idx, w = self._wait(index, wait)
        what = f"GET health/state/{state}"
        params: list[tuple[str, Any]] = []
        if idx:
            params.append(("index", idx))
            if w:
                params.append(("wait", w))
        if self.config.datacenter:
            params.append(("dc", self.config.datacenter))
        if filter:
            params.append(("filter", filter))
        convert = _state_converter(known)

        def call() -> Awaitable[tuple[str, list[CheckState]]]:
            return self._transport.get_array(f"/v1/health/state/{state}", params, convert)

        got, states = await (self._call(what, call) if idx else self._read(what, call))
        return _index(got), states

    # -- agent service registration (an instance registering itself, e.g. a web app)

    async def agent_service_register(
        self,
        name: str,
        *,
        service_id: str | None = None,
        address: str | None = None,
        port: int | None = None,
        tags: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
        check: Mapping[str, Any] | None = None,
        replace_existing_checks: bool = True,
    ) -> None:
        """Register a service (and its check, a Consul check definition) on the local agent.

        Idempotent: registering the same id again replaces the definition. Not a KV write, so
        never fenced: a registration belongs to the instance that makes it.
        """
        await self._call(
            f"PUT agent/service/register ({service_id or name})",
            lambda: self._api.agent.service.register(
                name,
                service_id=service_id,
                address=address,
                port=port,
                tags=list(tags),
                meta=dict(meta or {}),
                check=dict(check) if check else None,
                replace_existing_checks=replace_existing_checks,
            ),
        )

    async def agent_service_deregister(self, service_id: str) -> None:
        """Remove a service of the local agent (and its checks); an unknown id is not an error
        on current Consul, and raises :class:`NotFound` on agents that answer 404."""
        await self._call(
            f"PUT agent/service/deregister/{service_id}",
            lambda: self._api.agent.service.deregister(service_id),
        )

    # -- agent and status

    async def agent_self(self) -> dict[str, Any]:
        raw = await self._read("GET agent/self", lambda: self._api.agent.self())
        return dict(raw or {})

    async def status_leader(self) -> str:
        """The raft leader's address, ``""`` while there is none."""
        raw = await self._read("GET status/leader", lambda: self._api.status.leader())
        return str(raw or "")
