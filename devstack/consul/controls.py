"""The devstack's one-shot controls, shared by the Python handle and the ``/_devstack/*`` API.

A snapshot restore that moves the index backwards, a session expiring as if its TTL ran out, a
check forced to a status, and the agent's statistics: what reliability tests need to make the
agent misbehave on cue, and to see that it did.
"""

from __future__ import annotations

from typing import Any

from devstack.consul.core import Core
from devstack.consul.local import mark_check
from devstack.consul.sessions import invalidate_session


def reset_index(core: Core, to: int | None = None) -> int:
    """Emulate a snapshot restore: the index goes back to ``to`` (default: half of it)."""
    target = max(1, core.state.index // 2 if to is None else to)
    core.restores += 1
    core.state.reset_index(target)
    return target


def expire_session(core: Core, session_id: str) -> bool:
    """Invalidate a session as if its TTL had run out (lock-delay applies)."""
    return invalidate_session(core.state, session_id)


def force_check(
    core: Core, check_id: str, status: str = "critical", output: str = "", node: str | None = None
) -> bool:
    if status not in ("passing", "warning", "critical"):
        raise ValueError(f"invalid status {status!r}")
    return mark_check(core, check_id, status, output or f"forced {status} by devstack", node)


def stats(core: Core) -> dict[str, Any]:
    return {
        "Index": core.state.index,
        "BlockingQueries": core.state.watches.count(),
        "Keys": len(core.state.kv),
        "Sessions": len(core.state.sessions),
        "Faults": core.faults.as_dict(),
    }
