"""Secondary indexes over a watch's cache: client-go's Indexer, for level-based lookups.

A per-user reconcile of a watch over every service instance would otherwise scan the whole cache
to find that user's instances: O(users) per reconcile, O(users^2) per resync. A watch declares
named index functions (``indexes={"user": lambda i: [i.meta["user"]]}``); the runner keeps
``index value -> item ids`` up to date from the changes the source emits, and
``ctx.index(watch, "user", "ada")`` returns the items in O(matches).

The index follows the changes, never the cache directly: a source emits a change for every item
it adds, changes or removes, and an item it replaces silently (an identical rewrite) keeps the
same index values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from reconciler.sources.base import Change

log = logging.getLogger(__name__)

IndexFn = Callable[[Any], Iterable[str]]


class CacheIndex:
    """The named indexes of one watch: ``name -> value -> ids``."""

    def __init__(
        self, functions: Mapping[str, IndexFn], on_error: Callable[[str, Exception], None]
    ) -> None:
        self._functions = dict(functions)
        self._on_error = on_error
        self._by_value: dict[str, dict[str, set[str]]] = {name: {} for name in functions}
        self._values_of: dict[str, dict[str, tuple[str, ...]]] = {name: {} for name in functions}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._functions)

    def update(self, changes: Sequence[Change]) -> None:
        for name, fn in self._functions.items():
            by_value = self._by_value[name]
            values_of = self._values_of[name]
            for change in changes:
                for old in values_of.pop(change.id, ()):
                    ids = by_value.get(old)
                    if ids is not None:
                        ids.discard(change.id)
                        if not ids:
                            del by_value[old]
                if change.deleted:
                    continue
                try:
                    values = tuple(dict.fromkeys(str(v) for v in fn(change.item)))
                except Exception as exc:
                    self._on_error(name, exc)
                    continue
                if values:
                    values_of[change.id] = values
                    for value in values:
                        by_value.setdefault(value, set()).add(change.id)

    def ids(self, name: str, value: str) -> frozenset[str]:
        try:
            return frozenset(self._by_value[name].get(value, ()))
        except KeyError:
            raise KeyError(f"no index named {name!r} (known: {sorted(self._functions)})") from None

    def values(self, name: str) -> frozenset[str]:
        """Every value the index holds now (for example, every user with an instance)."""
        return frozenset(self._by_value[name])
