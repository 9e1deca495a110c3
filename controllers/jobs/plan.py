"""The jobs controller's decision for one user, as pure functions.

``decide(desired, existing)`` says what to do with user's job ``core-hmi-<id>``:

* never touch a job that does not carry ``Meta.manticore_owner = manticore-reconciler``
  (someone else's job of the same name is reported, not replaced or deleted);
* no job wanted and ours exists: purge it;
* wanted and missing: create it (``EnforceIndex`` with index 0: only if it still does not exist);
* wanted and ours but different: update it in place (``EnforceIndex`` with its current
  ``JobModifyIndex``). Different means: stopped by hand, a different ``manticore_template`` hash
  (a new template or new request values), or drift, a field the template sets holding another
  value in Nomad (an edit by hand that kept the meta). Nomad adds defaults to every job, so only
  what the template sets is compared (:func:`drift`); a job we just registered never counts as
  drifted, so an update happens once, never in a loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from controllers.templates import OWNER, OWNER_META, TEMPLATE_META

Action = Literal["none", "create", "update", "purge", "foreign"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


def owned(meta: Mapping[str, str] | None) -> bool:
    return (meta or {}).get(OWNER_META) == OWNER


# Maps Nomad never fills in itself: they must hold exactly what the template says (an
# environment variable or a driver option added by hand is drift, even where the template
# sets none).
STRICT_MAPS = frozenset({"Env", "Config", "Meta"})


def drift(actual: Any, desired: Any, path: str = "Job", limit: int = 5) -> list[str]:
    """Where ``actual`` does not hold what ``desired`` sets (other fields are Nomad's defaults
    and business, except the maps of :data:`STRICT_MAPS`, compared whole). Lists must match
    element by element; numbers compare by value."""
    found: list[str] = []
    _drift(actual, desired, path, found, limit)
    return found


def _drift(actual: Any, desired: Any, path: str, found: list[str], limit: int) -> None:
    if len(found) >= limit:
        return
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            found.append(path)
            return
        for key, value in desired.items():
            if key in STRICT_MAPS and dict(actual.get(key) or {}) != dict(value or {}):
                found.append(f"{path}.{key}")
                continue
            _drift(actual.get(key), value, f"{path}.{key}", found, limit)
        for key in STRICT_MAPS - set(desired):
            if actual.get(key) and _looks_like_task_or_group(desired):
                found.append(f"{path}.{key}")
    elif isinstance(desired, Sequence) and not isinstance(desired, str):
        if (
            not isinstance(actual, Sequence)
            or isinstance(actual, str)
            or len(actual) != len(desired)
        ):
            found.append(path)
            return
        for i, (a, d) in enumerate(zip(actual, desired, strict=True)):
            _drift(a, d, f"{path}[{i}]", found, limit)
    elif isinstance(desired, bool) or isinstance(actual, bool):
        if actual is not desired:
            found.append(path)
    elif isinstance(desired, (int, float)) and isinstance(actual, (int, float)):
        if actual != desired:
            found.append(path)
    elif actual != desired:
        found.append(path)


def _looks_like_task_or_group(obj: Mapping[str, Any]) -> bool:
    return "Driver" in obj or "Tasks" in obj


def decide(desired: Mapping[str, Any] | None, existing: Mapping[str, Any] | None) -> Decision:
    """What to do, given the job we want (None: none) and the job Nomad has (None: none)."""
    if existing is None:
        return Decision("create", "missing") if desired is not None else Decision("none")
    meta = existing.get("Meta") or {}
    if not owned(meta):
        if desired is None:
            return Decision("none", "not ours")
        return Decision("foreign", "a job of that name exists without our ownership meta")
    if desired is None:
        return Decision("purge", "no longer claimed")
    if existing.get("Stop"):
        return Decision("update", "stopped")
    if meta.get(TEMPLATE_META) != (desired.get("Meta") or {}).get(TEMPLATE_META):
        return Decision("update", "template")
    paths = drift(existing, desired)
    if paths:
        return Decision("update", "drift: " + ", ".join(paths))
    return Decision("none")


def fast_check(desired_hash: str | None, stub_meta: Mapping[str, str] | None, stop: bool) -> bool:
    """True when a cached job stub already shows the job we want (no read needed).

    Only a positive answer is trusted: a stub without meta (listed without it) or with another
    hash needs a full read and :func:`decide`.
    """
    if desired_hash is None or stub_meta is None or stop:
        return False
    return owned(stub_meta) and stub_meta.get(TEMPLATE_META) == desired_hash
