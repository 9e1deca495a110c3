"""``/v1/kv/<key>``: reads (single key, ``recurse``, ``keys``, ``raw``), writes and deletes.

Encoded read results are cached per KV generation, so a thousand blocking queries woken by one
write share one serialisation; list reads silently drop what the token may not read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from devstack.consul.acl import READ, WRITE
from devstack.consul.api.common import (
    PARKING_KEY,
    QueryOptions,
    authorizer,
    core_of,
    parse_query_options,
    require,
    token_sent,
)
from devstack.consul.api.mux import tail
from devstack.consul.api.reads import Result, blocking_respond, forward
from devstack.consul.core import Core
from devstack.consul.encoding import dumps, parse_uint
from devstack.consul.errors import ConsulError, bad_request, permission_denied, server_error
from devstack.consul.kv import (
    KV_MAX_VALUE_SIZE,
    InvalidSession,
    entry_json,
    kv_cas,
    kv_delete,
    kv_delete_cas,
    kv_delete_tree,
    kv_lock,
    kv_set,
    kv_unlock,
    validate_key,
)
from devstack.consul.state import KVEntry, State

TRUE = b"true"
FALSE = b"false"


# -- handlers -----------------------------------------------------------------------------------


def _entry_bytes(entry: KVEntry) -> bytes:
    """``dumps(entry_json(entry))``, kept on the entry until it changes."""
    source = (entry.modify_index, entry.create_index, entry.lock_index, entry.session, entry.flags)
    if entry.encoded_from != source:
        entry.encoded = dumps(entry_json(entry))
        entry.encoded_from = source
    return entry.encoded


def entries_bytes(entries: Iterable[KVEntry]) -> bytes:
    """A JSON array of entries, as ``dumps([entry_json(e) for e in entries])`` writes it (a
    list joins the JSON kept on each entry instead of encoding every entry per answer)."""
    return b"[" + b",".join(_entry_bytes(e) for e in entries) + b"]"


def _cached(st: State, cache_key: tuple[Any, ...], compute: Callable[[], Result]) -> Result:
    if st.kv_cache_generation != st.kv_generation:
        st.kv_cache.clear()
        st.kv_cache_generation = st.kv_generation
    hit = st.kv_cache.get(cache_key)
    if hit is None:
        hit = compute()
        if len(st.kv_cache) < 4096:
            st.kv_cache[cache_key] = hit
    return hit


async def kv_endpoint(request: web.Request) -> web.StreamResponse:
    """``KVSEndpoint``: the key is the rest of the path; validation first, then the verb."""
    core = core_of(request)
    opts = parse_query_options(request, core)
    key = tail(request)
    if key:
        validate_key(key)
    if request.method == "GET":
        return await _read(request, core, opts, key)
    if request.method == "PUT":
        return await _put(request, core, opts, key)
    return await _delete(request, core, opts, key)


async def _read(
    request: web.Request, core: Core, opts: QueryOptions, key: str
) -> web.StreamResponse:
    q = request.query
    keys_mode = "keys" in q
    if not keys_mode and "recurse" not in q and not key:
        raise bad_request("Missing key name")
    forward(core, opts.datacenter, opts.stale)
    authz = authorizer(request)
    st = core.state
    # Filtered lists differ per token, so the token is part of the cache key.
    token = authz.accessor if authz is not None else ""

    parking = request.app[PARKING_KEY]
    sent = token_sent(request)
    cache_key: tuple[Any, ...]
    if keys_mode:
        sep = q.get("separator", q.get("seperator", ""))
        cache_key = ("keys", key, sep, token)

        def run() -> Result:
            return _cached(st, cache_key, lambda: _list_keys(core, key, sep, authz))

        topics = _fallback(st, key)
    elif "recurse" in q:
        cache_key = ("list", key, token)

        def run() -> Result:
            return _cached(st, cache_key, lambda: _list(core, key, authz))

        topics = _fallback(st, key)
    else:
        require(request, "key", key, READ)
        raw = "raw" in q
        cache_key = ("get", key, raw)

        def run() -> Result:
            return _cached(st, cache_key, lambda: _get(st, key, raw))

        topics = ()
    return await blocking_respond(
        core, parking, request, opts, run, cache_key, topics, (key,), token_sent=sent
    )


def _fallback(st: State, prefix: str) -> tuple[str, ...]:
    _, fell_back = st.kv_prefix_index(prefix)
    return ("kvs",) if fell_back else ()


def _get(st: State, key: str, raw: bool) -> Result:
    entry = st.kv.get(key)
    if entry is None:
        return Result(st.max_index("kvs", "tombstones"), status=404, not_found=True)
    if raw:
        return Result(
            entry.modify_index,
            raw=entry.value,
            extra_headers={
                "Content-Type": "text/plain",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox",
            },
        )
    return Result(entry.modify_index, raw=entries_bytes((entry,)))


def _list(core: Core, prefix: str, authz: Any) -> Result:
    st = core.state
    index, _ = st.kv_prefix_index(prefix)
    entries = list(st.kv_entries(prefix))
    filtered = False
    if authz is not None and not authz.management:
        visible = [e for e in entries if authz.allowed("key", e.key, READ)]
        filtered = len(visible) != len(entries)
        entries = visible
    if not entries:
        return Result(index, status=404, filtered=filtered)
    return Result(index, raw=entries_bytes(entries), filtered=filtered)


def _list_keys(core: Core, prefix: str, sep: str, authz: Any) -> Result:
    st = core.state
    index, _ = st.kv_prefix_index(prefix)
    names = st.kv_keys.with_prefix(prefix)
    filtered = False
    if authz is not None and not authz.management:
        visible = [k for k in names if authz.allowed("key", k, READ)]
        filtered = len(visible) != len(names)
        names = visible
    if sep:
        out: list[str] = []
        seen: set[str] = set()
        plen = len(prefix)
        for name in names:
            cut = name.find(sep, plen)
            if cut >= 0:
                name = name[: cut + len(sep)]
                if name in seen:
                    continue
                seen.add(name)
            out.append(name)
        names = out
    if not names and prefix:
        return Result(index, status=404, filtered=filtered)
    return Result(index, raw=dumps(names), filtered=filtered)


def _conflicting(request: web.Request, *flags: str) -> None:
    present = [f for f in flags if f in request.query]
    if len(present) > 1:
        encoded = urlencode(sorted(request.query.items()))
        raise bad_request(f"Conflicting flags: {encoded}\n")


def _uint_param(request: web.Request, name: str) -> int:
    try:
        return parse_uint(request.query[name])
    except ValueError as exc:
        raise server_error(str(exc)) from exc


def _too_large(size: int) -> ConsulError:
    return ConsulError(
        413,
        f"Request body({size} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. See "
        "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
    )


def _bool(ok: bool) -> web.Response:
    return web.Response(body=TRUE if ok else FALSE, content_type="application/json")


async def _put(
    request: web.Request, core: Core, opts: QueryOptions, key: str
) -> web.StreamResponse:
    if not key:
        raise bad_request("Missing key name")
    _conflicting(request, "cas", "acquire", "release")
    q = request.query
    flags = _uint_param(request, "flags") if "flags" in q else 0
    cas = _uint_param(request, "cas") if "cas" in q else None
    # Only a declared length is checked, as Consul checks req.ContentLength.
    length = request.content_length
    if length is not None and length > KV_MAX_VALUE_SIZE:
        raise _too_large(length)
    value = await request.read()
    forward(core, opts.datacenter)
    require(request, "key", key, WRITE)
    st = core.state
    alloc = st.next_index
    if "acquire" in q:
        # The lock-delay is enforced before the write reaches the state store.
        if st.lock_delay_active(key):
            return _bool(False)
        try:
            ok, _ = kv_lock(st, key, value, flags, q["acquire"], alloc)
        except InvalidSession as exc:
            raise server_error(str(exc)) from exc
        return _bool(ok)
    if "release" in q:
        return _bool(kv_unlock(st, key, value, flags, q["release"], alloc))
    if cas is not None:
        return _bool(kv_cas(st, key, value, flags, cas, alloc))
    kv_set(st, key, value, flags, alloc)
    return _bool(True)


async def _delete(
    request: web.Request, core: Core, opts: QueryOptions, key: str
) -> web.StreamResponse:
    _conflicting(request, "recurse", "cas")
    q = request.query
    recurse = "recurse" in q
    if not recurse and not key:
        raise bad_request("Missing key name")
    cas = _uint_param(request, "cas") if "cas" in q else None
    forward(core, opts.datacenter)
    st = core.state
    if recurse:
        authz = authorizer(request)
        if authz is not None and not authz.write_prefix("key", key):
            raise permission_denied(authz.accessor, "key:write", key)
        kv_delete_tree(st, key, st.next_index)
        return _bool(True)
    require(request, "key", key, WRITE)
    if cas is not None:
        return _bool(kv_delete_cas(st, key, cas, st.next_index))
    kv_delete(st, key, st.next_index)
    return _bool(True)
