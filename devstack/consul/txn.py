"""Transactions: several KV operations applied atomically at one index, or none at all.

The leader fence of every controller is a transaction (check that our session still holds the
lock, then write), so its all-or-nothing rule and its 409 error texts must be exact. Operations
run in order against the live store with an undo log; any failing operation rolls everything back,
and every failure is reported, as ``agent/consul/state/txn.go`` does.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from devstack.consul.acl import READ, WRITE, Authorizer
from devstack.consul.encoding import CI, parse_uint
from devstack.consul.errors import ConsulError, bad_request
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
)
from devstack.consul.state import KVEntry, State

READ_VERBS = {"get", "get-tree", "check-index", "check-session", "check-not-exists", "get-or-empty"}
WRITE_VERBS = {"set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas"}
TXN_MAX_OPS = 128
MAX_TXN_LEN = 512 * 1024


class _Undo:
    """Enough of the store's previous state to put it back if the transaction fails."""

    def __init__(self, st: State) -> None:
        self.st = st
        self.index = st.index
        self.tables = dict(st.table_index)
        self.keys: dict[str, tuple[KVEntry | None, int | None]] = {}

    def touch(self, key: str) -> None:
        if key not in self.keys:
            entry = self.st.kv.get(key)
            self.keys[key] = (entry.copy() if entry else None, self.st.tombstones.get(key))

    def touch_tree(self, prefix: str) -> None:
        for key in self.st.kv_keys.with_prefix(prefix):
            self.touch(key)

    def rollback(self) -> None:
        st = self.st
        for key, (entry, tomb) in self.keys.items():
            if entry is None:
                if st.kv.pop(key, None) is not None:
                    st.kv_keys.discard(key)
            else:
                st.kv[key] = entry
                st.kv_keys.add(key)
            if tomb is None:
                if st.tombstones.pop(key, None) is not None:
                    st.tomb_keys.discard(key)
            else:
                st.tombstones[key] = tomb
                st.tomb_keys.add(key)
        st.index = self.index
        st.table_index.update(self.tables)
        st.kv_generation += 1


class _Op:
    __slots__ = ("flags", "index", "key", "session", "value", "verb")

    def __init__(self, verb: str, key: str, value: bytes, flags: int, index: int, session: str):
        self.verb, self.key, self.value = verb, key, value
        self.flags, self.index, self.session = flags, index, session


def _uint(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad_request(f"Failed to parse body: invalid {name}")
    try:
        return parse_uint(str(value)) if isinstance(value, str) else int(value)
    except ValueError as exc:
        raise bad_request(f"Failed to parse body: {exc}") from exc


def parse_ops(data: Any) -> list[_Op | str]:
    if not isinstance(data, list):
        raise bad_request("Failed to parse body: expected a JSON array of operations")
    if len(data) > TXN_MAX_OPS:
        raise ConsulError(
            413, f"Transaction contains too many operations ({len(data)} > {TXN_MAX_OPS})"
        )
    ops: list[_Op | str] = []
    for raw in data:
        if not isinstance(raw, dict):
            raise bad_request("Failed to parse body: each operation must be an object")
        outer = CI(raw)
        kv = outer.obj("KV")
        if kv is None:
            kinds = ", ".join(sorted(raw)) or "empty"
            ops.append(f"unsupported operation ({kinds}): only KV operations are emulated")
            continue
        encoded = kv.get("Value")
        value = b""
        if encoded is not None:
            if not isinstance(encoded, str):
                raise bad_request("Failed to parse body: Value must be a base64 string")
            try:
                value = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise bad_request(f"Failed to parse body: illegal base64 data: {exc}") from exc
        key = kv.text("Key")
        if len(value) > KV_MAX_VALUE_SIZE:
            raise ConsulError(
                413,
                f'Value for key "{key}" is too large ({len(value)} > {KV_MAX_VALUE_SIZE} bytes)',
            )
        ops.append(
            _Op(
                kv.text("Verb"),
                key,
                value,
                _uint(kv.get("Flags"), "Flags"),
                _uint(kv.get("Index"), "Index"),
                kv.text("Session"),
            )
        )
    return ops


def _denied(authz: Authorizer | None, op: _Op) -> bool:
    if authz is None or authz.management:
        return False
    if op.verb in ("get", "get-tree", "get-or-empty"):
        return False  # filtered from the results instead
    if op.verb == "delete-tree":
        return not authz.write_prefix("key", op.key)
    need = READ if op.verb in READ_VERBS else WRITE
    return not authz.allowed("key", op.key, need)


def apply_ops(
    st: State, ops: list[_Op | str], authz: Authorizer | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Run the operations; return ``(results, errors, filtered)``, rolled back on any error."""
    undo = _Undo(st)
    idx = st.index + 1
    used = False

    def alloc() -> int:
        nonlocal used
        used = True
        st.index = idx
        return idx

    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    filtered = False
    for i, op in enumerate(ops):
        if isinstance(op, str):
            errors.append({"OpIndex": i, "What": op})
            continue
        if _denied(authz, op):
            errors.append({"OpIndex": i, "What": "Permission denied"})
            continue
        what, out, hidden = _apply_one(st, op, undo, alloc, authz)
        filtered = filtered or hidden
        if what:
            errors.append({"OpIndex": i, "What": what})
        results.extend({"KV": e} for e in out)
    if errors:
        undo.rollback()
        return [], errors, filtered
    if not used:
        st.index = undo.index
    return results, errors, filtered


def _apply_one(
    st: State, op: _Op, undo: _Undo, alloc: Any, authz: Authorizer | None
) -> tuple[str, list[dict[str, Any]], bool]:
    verb, key = op.verb, op.key

    def blank(k: str) -> list[dict[str, Any]]:
        entry = st.kv.get(k)
        return [entry_json(entry, with_value=False)] if entry else []

    if verb in WRITE_VERBS:
        if verb == "delete-tree":
            undo.touch_tree(key)
        else:
            undo.touch(key)
    if verb == "set":
        kv_set(st, key, op.value, op.flags, alloc)
        return "", blank(key), False
    if verb == "cas":
        if kv_cas(st, key, op.value, op.flags, op.index, alloc):
            return "", blank(key), False
        return f'failed to set key "{key}", index is stale', [], False
    if verb == "lock":
        try:
            ok, why = kv_lock(st, key, op.value, op.flags, op.session, alloc)
        except InvalidSession as exc:
            return str(exc), [], False
        if ok:
            return "", blank(key), False
        if why == "delay":
            return f'failed to lock key "{key}" due to lock delay', [], False
        return f'failed to lock key "{key}", lock is already held', [], False
    if verb == "unlock":
        if kv_unlock(st, key, op.value, op.flags, op.session, alloc):
            return "", blank(key), False
        return (
            f'failed to unlock key "{key}", lock isn\'t held, or is held by another session',
            [],
            False,
        )
    if verb in ("get", "get-or-empty"):
        entry = st.kv.get(key)
        if entry is None:
            if verb == "get-or-empty":
                return "", [], False
            return f'key "{key}" doesn\'t exist', [], False
        if authz is not None and not authz.allowed("key", key, READ):
            return "", [], True
        return "", [entry_json(entry)], False
    if verb == "get-tree":
        entries = list(st.kv_entries(key))
        visible = [e for e in entries if authz is None or authz.allowed("key", e.key, READ)]
        return "", [entry_json(e) for e in visible], len(visible) != len(entries)
    if verb == "check-index":
        entry = st.kv.get(key)
        if entry is None:
            return f'failed to check index, key "{key}" doesn\'t exist', [], False
        if entry.modify_index != op.index:
            return (
                f'failed index check for key "{key}", current modify index '
                f"{entry.modify_index} != {op.index}",
                [],
                False,
            )
        return "", blank(key), False
    if verb == "check-session":
        entry = st.kv.get(key)
        if entry is None:
            return f'failed to check session, key "{key}" doesn\'t exist', [], False
        if entry.session != op.session:
            return (
                f'failed session check for key "{key}", current session '
                f'"{entry.session}" != "{op.session}"',
                [],
                False,
            )
        return "", blank(key), False
    if verb == "check-not-exists":
        if key in st.kv:
            return f'key "{key}" exists', [], False
        return "", [], False
    if verb == "delete":
        kv_delete(st, key, alloc)
        return "", [], False
    if verb == "delete-tree":
        kv_delete_tree(st, key, alloc)
        return "", [], False
    if verb == "delete-cas":
        if kv_delete_cas(st, key, op.index, alloc):
            return "", [], False
        return f'failed to delete key "{key}", index is stale', [], False
    return f'unknown KV verb "{verb}"', [], False
