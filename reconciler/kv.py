"""Typed KV values, and the read/write helpers every controller would otherwise copy.

``decode`` turns raw bytes from Consul into a model or raises :class:`InvalidValue` (a terminal
error: retrying cannot fix malformed JSON, and the runner counts it in
``reconciler_invalid_input_total`` and logs it), so one user's bad value never crashes a
controller or blocks another user's key. ``encode`` is canonical (sorted keys, no spaces), so
equal models give equal bytes and an applier can skip writes that would change nothing.

:class:`KVStore` is what a reconcile gets as ``ctx.kv``: reads, and writes that all go through
the controller's :class:`~reconciler.leader.FencedKV` (a lock-checking transaction while a
leader-elected controller leads), with the patterns that come up in every controller done once:
write only when the bytes differ, delete only what exists, read-modify-write with CAS retried on
conflict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.clients.consul import KVEntry, KVOp
from reconciler.result import InvalidValue, TemporaryError

M = TypeVar("M", bound=BaseModel)

MAX_VALUE_SIZE = 512 * 1024


def decode(model: type[M], raw: bytes | str | None, *, key: str | None = None) -> M:
    """Parse and validate one KV value; :class:`InvalidValue` with a clear message otherwise."""
    where = f" at {key!r}" if key else ""
    if raw is None or raw == b"" or raw == "":
        raise InvalidValue(f"empty value{where}, expected {model.__name__}", kind="empty", key=key)
    if len(raw) > MAX_VALUE_SIZE:
        raise InvalidValue(
            f"value{where} is {len(raw)} bytes, over Consul's {MAX_VALUE_SIZE}",
            kind="oversized",
            key=key,
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        kind = "malformed-json" if _is_json_error(exc) else "schema"
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        raise InvalidValue(
            f"invalid {model.__name__}{where}: {loc}: {first.get('msg')} "
            f"({exc.error_count()} error(s))",
            kind=kind,
            key=key,
        ) from exc


def _is_json_error(exc: ValidationError) -> bool:
    return any(err.get("type") == "json_invalid" for err in exc.errors())


def encode(model: BaseModel) -> bytes:
    """Canonical JSON bytes of a model (sorted keys, compact, aliases, no None-valued fields)."""
    data = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Versioned(Generic[M]):
    """A decoded value with the ``ModifyIndex`` it was read at (for a later CAS)."""

    value: M
    index: int
    entry: KVEntry


class Unseen:
    """The type of :data:`UNSEEN`: no watch's view of a key was given."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSEEN"


UNSEEN = Unseen()


class KVReader(Protocol):
    async def kv_get(self, key: str, *, consistent: bool = False) -> tuple[int, KVEntry | None]: ...

    async def kv_list(
        self, prefix: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[int, list[KVEntry]]: ...


class KVWriter(Protocol):
    async def apply(self, ops: Sequence[KVOp]) -> bool: ...


class KVStore:
    """``ctx.kv``: Consul KV for a reconcile, every write through the controller's writer.

    Reads are plain (default consistency); a CAS write fails (``False``, or a retry inside
    :meth:`update`) when the value changed since it was read, so a stale read never overwrites.
    """

    def __init__(self, reader: KVReader, writer: KVWriter, *, update_attempts: int = 8) -> None:
        self._reader = reader
        self._writer = writer
        self.update_attempts = update_attempts

    # -- reads
    async def get(self, key: str) -> KVEntry | None:
        return (await self._reader.kv_get(key))[1]

    async def list(self, prefix: str) -> list[KVEntry]:
        return (await self._reader.kv_list(prefix))[1]

    async def read(self, key: str, model: type[M]) -> Versioned[M] | None:
        """The value of ``key`` as ``model`` (None when absent); :class:`InvalidValue` if bad."""
        entry = await self.get(key)
        if entry is None:
            return None
        try:
            value = decode(model, entry.value, key=key)
        except InvalidValue as exc:
            exc.index = entry.modify_index
            raise
        return Versioned(value, entry.modify_index, entry)

    # -- writes
    async def apply(self, ops: Sequence[KVOp]) -> bool:
        """One transaction (fenced while leading). False when a cas or check op failed."""
        return await self._writer.apply(ops)

    async def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        """Write ``key``; with ``cas``, only if its ModifyIndex still is ``cas`` (0 = absent)."""
        op = KVOp.set(key, value) if cas is None else KVOp.cas(key, value, index=cas)
        return await self.apply([op])

    async def delete(self, key: str, *, cas: int | None = None) -> bool:
        op = KVOp.delete(key) if cas is None else KVOp.delete_cas(key, index=cas)
        return await self.apply([op])

    async def delete_tree(self, prefix: str) -> bool:
        return await self.apply([KVOp.delete_tree(prefix)])

    async def put_if_changed(
        self, key: str, value: BaseModel | bytes, *, seen: KVEntry | Unseen | None = UNSEEN
    ) -> bool:
        """Make ``key`` hold ``value``; write (with CAS on what was read) only if the bytes
        differ. True when it wrote. A concurrent change makes the CAS fail: retried.

        ``seen`` is the entry as a watch of ``key`` last showed it (None: absent there). Pass
        it only when that watch's changes of ``key`` trigger this reconcile again: then equal
        bytes cost no request (if the watch is behind, its next change brings the reconcile
        back), and different bytes are one CAS on the index seen, read afresh only if that CAS
        fails. Without it, every call starts with a read."""
        wanted = encode(value) if isinstance(value, BaseModel) else value
        if not isinstance(seen, Unseen):
            if seen is not None and seen.value == wanted:
                return False
            if await self.put(key, wanted, cas=seen.modify_index if seen else 0):
                return True
        for _ in range(self.update_attempts):
            current = await self.get(key)
            if current is not None and current.value == wanted:
                return False
            if await self.put(key, wanted, cas=current.modify_index if current else 0):
                return True
        raise TemporaryError(f"{key}: changed by someone else on every attempt; retrying later")

    async def delete_if_present(self, key: str, *, seen: KVEntry | Unseen | None = UNSEEN) -> bool:
        """Delete ``key`` if it exists. True when something was deleted.

        ``seen`` as for :meth:`put_if_changed`: absent there costs no request, present is one
        delete with CAS on the index seen before any read."""
        if not isinstance(seen, Unseen):
            if seen is None:
                return False
            if await self.delete(key, cas=seen.modify_index):
                return True
        for _ in range(self.update_attempts):
            current = await self.get(key)
            if current is None:
                return False
            if await self.delete(key, cas=current.modify_index):
                return True
        raise TemporaryError(f"{key}: changed by someone else on every attempt; retrying later")

    async def update(
        self, key: str, model: type[M], change: Callable[[M | None], M | None]
    ) -> M | None:
        """Read-modify-write ``key`` with CAS, retried on conflict; returns what it holds now.

        ``change`` gets the current value (None when absent) and returns the new one (None
        deletes; an equal value writes nothing). It may run several times: keep it pure. An
        invalid current value raises :class:`InvalidValue` rather than being overwritten.
        """
        for _ in range(self.update_attempts):
            current = await self.read(key, model)
            new = change(current.value if current else None)
            if new is None:
                if current is None or await self.delete(key, cas=current.index):
                    return None
                continue
            wanted = encode(new)
            if current is not None and current.entry.value == wanted:
                return current.value
            if await self.put(key, wanted, cas=current.index if current else 0):
                return new
        raise TemporaryError(f"{key}: changed by someone else on every attempt; retrying later")
