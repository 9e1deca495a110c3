"""What a source is: something that watches Consul or Nomad and says which items changed.

A source keeps a warm cache of what it watches (``items()``), reports ``ready`` after its first
successful read, and calls ``emit`` with a :class:`Change` per item that changed: the item's id
in the cache (a KV key, ``<node>/<service id>``, a Nomad id...), and the item itself (for a
deletion, the last one known). It never decides what to reconcile: the controller's key mapper
turns each changed item into work-queue keys, so the same source type serves every controller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Change:
    """One item that was added, changed or removed.

    ``item`` is the item now (for a deletion, the last one known); ``old`` the one it replaced
    (None for an addition or a deletion). The runner maps both to keys, so an item that moves
    from one key to another (a service re-tagged to another user) reconciles both.
    """

    id: str
    item: Any
    deleted: bool = False
    old: Any = None


Emit = Callable[[Sequence[Change]], None]


@runtime_checkable
class Source(Protocol):
    """A watch. ``run`` loops until cancelled; it must never return on errors (it backs off)."""

    @property
    def name(self) -> str: ...

    @property
    def ready(self) -> bool: ...

    async def wait_ready(self) -> None: ...

    def items(self) -> Mapping[str, Any]: ...

    async def run(self, emit: Emit, *, controller: str) -> None: ...
