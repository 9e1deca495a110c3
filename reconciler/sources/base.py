"""What a source is: something that watches Consul or Nomad and says which items changed.

A source keeps a warm cache of what it watches (``items()``), reports ``ready`` after its first
successful read, and calls ``emit`` with the ids of the items that changed (a KV key, a service
name, a Nomad job id...). It never decides what to reconcile: the controller maps item ids to
work-queue keys, so the same source type serves every controller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

Emit = Callable[[Iterable[str]], None]


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
