"""Transactions: several KV operations applied atomically at one index, or none at all.

The leader fence of every controller is a transaction (check that our session still holds the
lock, then write), so its all-or-nothing rule and its 409 error texts must be exact. Operations
run in order against the live store with an undo log; any failing operation rolls everything back,
and every failure is reported, as ``agent/consul/state/txn.go`` does.
"""

from __future__ import annotations

from typing import Any

from devstack.consul.acl import READ, WRITE, Authorizer
from devstack.consul.errors import ConsulError, go_quote, permission_denied
from devstack.consul.gojson import GoJSONError, go_b64decode, unmarshal_type_error
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


class _FirstError:
    """Go's decoder keeps decoding after a type error and reports the first one at the end."""

    def __init__(self) -> None:
        self.error: GoJSONError | None = None

    def save(self, error: GoJSONError) -> None:
        if self.error is None:
            self.error = error


_KV_FIELDS = {
    "verb": ("Verb", "api.KVOp"),
    "key": ("Key", "string"),
    "value": ("Value", "[]uint8"),
    "flags": ("Flags", "uint64"),
    "index": ("Index", "uint64"),
    "session": ("Session", "string"),
    "namespace": ("Namespace", "string"),
    "partition": ("Partition", "string"),
}
_OP_FIELDS = {
    "kv": ("KV", "api.KVTxnOp"),
    "node": ("Node", "api.NodeTxnOp"),
    "service": ("Service", "api.ServiceTxnOp"),
    "check": ("Check", "api.CheckTxnOp"),
}


def _field(fields: dict[str, tuple[str, str]], name: str) -> tuple[str, str] | None:
    # Go matches a JSON key to a field exactly, else case-insensitively.
    return fields.get(name.lower())


def _kv_op(raw: dict[str, Any], errors: _FirstError) -> _Op:
    values: dict[str, Any] = {}
    for name, value in raw.items():
        spec = _field(_KV_FIELDS, name)
        if spec is None:
            errors.save(GoJSONError(f"json: unknown field {go_quote(name)}"))
            continue
        field, type_name = spec
        if value is None:
            continue
        path = f"KV.{field}"
        if type_name in ("string", "api.KVOp"):
            if not isinstance(value, str):
                errors.save(unmarshal_type_error(value, "KVTxnOp", path, type_name))
                continue
        elif type_name == "uint64":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.save(unmarshal_type_error(value, "KVTxnOp", path, type_name))
                continue
            if isinstance(value, float) or not 0 <= value < 1 << 64:
                errors.save(unmarshal_type_error(value, "KVTxnOp", path, type_name, literal=True))
                continue
        elif type_name == "[]uint8":
            if isinstance(value, str):
                try:
                    value = go_b64decode(value)
                except GoJSONError as exc:
                    errors.save(exc)
                    continue
            elif isinstance(value, list) and all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in value
            ):
                value = bytes(value)
            else:
                errors.save(unmarshal_type_error(value, "KVTxnOp", path, type_name))
                continue
        values[field] = value
    return _Op(
        values.get("Verb", ""),
        values.get("Key", ""),
        values.get("Value", b""),
        values.get("Flags", 0),
        values.get("Index", 0),
        values.get("Session", ""),
    )


def parse_ops(data: Any) -> list[_Op | str]:
    """Decode ``api.TxnOps`` as Go does: typed, unknown fields refused, first error reported.

    Raises :class:`GoJSONError` for what Go's decoder refuses, and 413 for too many operations
    or a value over the limit. An operation with none of KV/Node/Service/Check is dropped, as
    Consul drops it; Node/Service/Check operations are not emulated and come back as an error
    entry of the transaction.
    """
    errors = _FirstError()
    if data is None:
        return []
    if not isinstance(data, list):
        raise unmarshal_type_error(data, "", "", "api.TxnOps")
    ops: list[_Op | str] = []
    for raw in data:
        if raw is None:
            continue
        if not isinstance(raw, dict):
            errors.save(unmarshal_type_error(raw, "", "", "api.TxnOp"))
            continue
        kinds: list[str] = []
        op: _Op | None = None
        for name, value in raw.items():
            spec = _field(_OP_FIELDS, name)
            if spec is None:
                errors.save(GoJSONError(f"json: unknown field {go_quote(name)}"))
                continue
            field, type_name = spec
            if value is None:
                continue
            if not isinstance(value, dict):
                errors.save(unmarshal_type_error(value, "TxnOp", field, type_name))
                continue
            if field == "KV":
                op = _kv_op(value, errors)
            else:
                kinds.append(field)
        if op is not None:
            ops.append(op)
        elif kinds:
            # Consul runs these against the catalog; the devstack does not emulate them.
            ops.append(
                f"{kinds[0]} operations are not emulated by the devstack (only KV operations)"
            )
    if errors.error is not None:
        raise errors.error
    if len(ops) > TXN_MAX_OPS:
        raise ConsulError(
            413, f"Transaction contains too many operations ({len(ops)} > {TXN_MAX_OPS})"
        )
    for entry in ops:
        if isinstance(entry, _Op) and len(entry.value) > KV_MAX_VALUE_SIZE:
            raise ConsulError(
                413,
                f"Value for key {go_quote(entry.key)} is too large "
                f"({len(entry.value)} > {KV_MAX_VALUE_SIZE} bytes)",
            )
    return ops


def _precheck(st: State, op: _Op, authz: Authorizer | None) -> str:
    """``kvsPreApply``: key present, the token's permission for the verb, the lock-delay.

    Run over every operation before any is applied; if one fails, only these errors are
    reported and nothing runs.
    """
    if not op.key and op.verb != "delete-tree":
        return "Must provide key"
    if authz is not None and not authz.management:
        if op.verb == "delete-tree":
            if not authz.write_prefix("key", op.key):
                return permission_denied(authz.accessor, "key:write", op.key).text
        elif op.verb in ("get", "get-tree", "get-or-empty"):
            pass  # filtered from the results instead
        elif op.verb in ("check-session", "check-index"):
            if not authz.allowed("key", op.key, READ):
                return permission_denied(authz.accessor, "key:read", op.key).text
        elif not authz.allowed("key", op.key, WRITE):
            return permission_denied(authz.accessor, "key:write", op.key).text
    if op.verb == "lock" and st.lock_delay_active(op.key):
        return f"failed to lock key {go_quote(op.key)} due to lock delay"
    return ""


def apply_ops(
    st: State, ops: list[_Op | str], authz: Authorizer | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Run the operations; return ``(results, errors, filtered)``, rolled back on any error.

    ``filtered`` tells whether results the token may not read were dropped.
    """
    errors: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        what = op if isinstance(op, str) else _precheck(st, op, authz)
        if what:
            errors.append({"OpIndex": i, "What": what})
    if errors:
        return [], errors, False
    undo = _Undo(st)
    idx = st.index + 1
    used = False

    def alloc() -> int:
        nonlocal used
        used = True
        st.index = idx
        return idx

    results: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        assert not isinstance(op, str)
        what, out = _apply_one(st, op, undo, alloc)
        if what:
            errors.append({"OpIndex": i, "What": what})
        results.extend({"KV": e} for e in out)
    if errors:
        undo.rollback()
        return [], errors, False
    if not used:
        st.index = undo.index
    if authz is None or authz.management:
        return results, [], False
    visible = [r for r in results if authz.allowed("key", r["KV"]["Key"], READ)]
    return visible, [], len(visible) != len(results)


def _apply_one(st: State, op: _Op, undo: _Undo, alloc: Any) -> tuple[str, list[dict[str, Any]]]:
    verb, key = op.verb, op.key
    quoted = go_quote(key)

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
        return "", blank(key)
    if verb == "cas":
        if kv_cas(st, key, op.value, op.flags, op.index, alloc):
            return "", blank(key)
        return f"failed to set key {quoted}, index is stale", []
    if verb == "lock":
        try:
            ok, _ = kv_lock(st, key, op.value, op.flags, op.session, alloc)
        except InvalidSession as exc:
            return str(exc), []
        if ok:
            return "", blank(key)
        return f"failed to lock key {quoted}, lock is already held", []
    if verb == "unlock":
        if kv_unlock(st, key, op.value, op.flags, op.session, alloc):
            return "", blank(key)
        return (
            f"failed to unlock key {quoted}, lock isn't held, or is held by another session",
            [],
        )
    if verb in ("get", "get-or-empty"):
        entry = st.kv.get(key)
        if entry is not None:
            return "", [entry_json(entry)]
        if verb == "get":
            return f"key {quoted} doesn't exist", []
        # Consul answers with the operation's own entry, its value blanked.
        return "", [entry_json(KVEntry(key, b"", op.flags, op.session, 0, 0, op.index))]
    if verb == "get-tree":
        return "", [entry_json(e) for e in st.kv_entries(key)]
    if verb == "check-index":
        entry = st.kv.get(key)
        if entry is None:
            return f"failed to check index, key {quoted} doesn't exist", []
        if entry.modify_index != op.index:
            return (
                f"failed index check for key {quoted}, current modify index "
                f"{entry.modify_index} != {op.index}",
                [],
            )
        return "", blank(key)
    if verb == "check-session":
        entry = st.kv.get(key)
        if entry is None:
            return f"failed to check session, key {quoted} doesn't exist", []
        if entry.session != op.session:
            return (
                f"failed session check for key {quoted}, current session "
                f"{go_quote(entry.session)} != {go_quote(op.session)}",
                [],
            )
        return "", blank(key)
    if verb == "check-not-exists":
        if key in st.kv:
            return f"key {quoted} exists", []
        return "", []
    if verb == "delete":
        kv_delete(st, key, alloc)
        return "", []
    if verb == "delete-tree":
        kv_delete_tree(st, key, alloc)
        return "", []
    if verb == "delete-cas":
        if kv_delete_cas(st, key, op.index, alloc):
            return "", []
        return f"failed to delete key {quoted}, index is stale", []
    return f"unknown KV verb {go_quote(verb)}", []
