"""Typed KV values: every value a controller reads or writes is a pydantic model.

``decode`` turns raw bytes from Consul into a model or raises :class:`InvalidValue` (a terminal
error: retrying cannot fix malformed JSON, and the runner counts it in
``reconciler_invalid_input_total`` and logs it), so one user's bad value never crashes a
controller or blocks another user's key. ``encode`` is canonical (sorted keys, no spaces), so
equal models give equal bytes and an applier can skip writes that would change nothing.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.result import InvalidValue

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
