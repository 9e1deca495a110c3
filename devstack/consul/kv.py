"""The KV store's operations, shared by ``/v1/kv/<key>`` and ``/v1/txn``.

The operations follow ``agent/consul/state/kvs.go``: a plain set keeps the lock holder, ``cas``
checks ``ModifyIndex``, ``lock``/``unlock`` move ``Session`` and ``LockIndex``, deletes leave
tombstones so prefix indexes advance. Key names follow the 1.22 validation rules.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from devstack.consul.errors import bad_request, go_quote
from devstack.consul.state import KVEntry, State

Alloc = Callable[[], int]
KV_MAX_VALUE_SIZE = 512 * 1024


class InvalidSession(Exception):
    def __init__(self, session: str, text: str = "") -> None:
        super().__init__(text or f"invalid session {go_quote(session)}")


# -- encoding -----------------------------------------------------------------------------------


def entry_json(entry: KVEntry, *, with_value: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode() if with_value and entry.value else None,
    }
    if entry.session:
        out["Session"] = entry.session
    out["CreateIndex"] = entry.create_index
    out["ModifyIndex"] = entry.modify_index
    return out


# -- state operations (shared with /v1/txn) -----------------------------------------------------


def kv_set(st: State, key: str, value: bytes, flags: int, alloc: Alloc) -> bool:
    existing = st.kv.get(key)
    if existing is not None:
        if existing.value == value and existing.flags == flags:
            # Consul skips writing an identical entry, so its ModifyIndex does not move.
            return True
        idx = alloc()
        entry = existing.copy()
        entry.value, entry.flags, entry.modify_index = value, flags, idx
    else:
        idx = alloc()
        entry = KVEntry(key, value, flags, "", 0, idx, idx)
    st.kv_put_entry(entry, idx)
    return True


def kv_cas(st: State, key: str, value: bytes, flags: int, index: int, alloc: Alloc) -> bool:
    existing = st.kv.get(key)
    if index == 0 and existing is not None:
        return False
    if index != 0 and (existing is None or existing.modify_index != index):
        return False
    return kv_set(st, key, value, flags, alloc)


def kv_lock(
    st: State, key: str, value: bytes, flags: int, session: str, alloc: Alloc
) -> tuple[bool, str]:
    """Acquire: ``(ok, reason)`` with reason ``held`` when another session holds the key.

    The lock-delay is checked by the callers before this runs, as Consul checks it on the
    leader before the write is applied.
    """
    if not session:
        raise InvalidSession("", "missing session")
    if session not in st.sessions:
        raise InvalidSession(session)
    existing = st.kv.get(key)
    if existing is not None:
        if existing.session == session:
            if existing.value == value and existing.flags == flags:
                return True, ""
            lock_index = existing.lock_index
        elif existing.session:
            return False, "held"
        else:
            lock_index = existing.lock_index + 1
        idx = alloc()
        entry = KVEntry(key, value, flags, session, lock_index, existing.create_index, idx)
    else:
        idx = alloc()
        entry = KVEntry(key, value, flags, session, 1, idx, idx)
    st.kv_put_entry(entry, idx)
    return True, ""


def kv_unlock(st: State, key: str, value: bytes, flags: int, session: str, alloc: Alloc) -> bool:
    existing = st.kv.get(key)
    if existing is None or not session or existing.session != session:
        return False
    idx = alloc()
    entry = KVEntry(key, value, flags, "", existing.lock_index, existing.create_index, idx)
    st.kv_put_entry(entry, idx)
    return True


def kv_delete(st: State, key: str, alloc: Alloc) -> None:
    if key in st.kv:
        st.kv_delete_key(key, alloc())


def kv_delete_cas(st: State, key: str, index: int, alloc: Alloc) -> bool:
    existing = st.kv.get(key)
    if existing is None:
        return True
    if existing.modify_index != index:
        return False
    st.kv_delete_key(key, alloc())
    return True


def kv_delete_tree(st: State, prefix: str, alloc: Alloc) -> None:
    keys = st.kv_keys.with_prefix(prefix)
    if not keys:
        return
    idx = alloc()
    for key in keys:
        st.kv_delete_key(key, idx)
    st.watches.notify_kv_tree(prefix)


def release_session_locks(st: State, session: str, behavior: str, delay: float, idx: int) -> None:
    """What invalidating a session does to the keys it holds (``deleteSessionTxn``)."""
    held = [e for e in st.kv.values() if e.session == session]
    until = time.monotonic() + delay
    for entry in held:
        if delay > 0:
            st.lock_delays[entry.key] = until
        if behavior == "delete":
            st.kv_delete_key(entry.key, idx)
        else:
            updated = entry.copy()
            updated.session = ""
            updated.modify_index = idx
            st.kv_put_entry(updated, idx)


# -- key names ----------------------------------------------------------------------------------


def validate_key(key: str) -> None:
    """The 1.22 rules: no leading slash, no ``..`` segment, no leading or trailing space."""
    if key.startswith("/") or key != key.strip() or ".." in key.split("/"):
        raise bad_request(f"Invalid key name: {key!r}")
    if "\x00" in key:
        raise bad_request(f"Invalid key name: {key!r}")
