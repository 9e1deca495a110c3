"""What a reconcile gets besides its key: clients, the fenced KV store, caches, status, a logger.

The context is where "fenced by default" is enforced. A leader-elected controller sees Consul
only through :attr:`Context.consul`, a read-only view, and writes only through
:attr:`Context.kv`, whose every write is a transaction checking that this replica still holds
the lock. Writing around the fence takes :attr:`Context.unfenced_consul`, an explicit, named
escape hatch. Side effects outside Consul cannot be fenced by Consul: ``ctx.nomad`` and
``ctx.elb`` check leadership just before every mutating call and refuse once the replica knows
it was deposed, and rely on their own check-and-set (``EnforceIndex`` on job registration) for
the window between that check and the call arriving (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from reconciler import metrics
from reconciler.clients.consul import ConsulClient, ConsulReader, KVEntry
from reconciler.clients.errors import ConfigError
from reconciler.index import CacheIndex
from reconciler.kv import KVStore, decode
from reconciler.result import InvalidValue
from reconciler.sources.base import Source
from reconciler.status import StatusReport

if TYPE_CHECKING:
    from reconciler.clients.elb import ELBClient
    from reconciler.clients.nomad import NomadClient

M = TypeVar("M", bound=BaseModel)


@dataclass
class Clients:
    """The clients one controller's reconciles use (guarded views for leader-elected ones)."""

    consul: ConsulClient
    reader: ConsulReader
    nomad: NomadClient | None
    elb: ELBClient | None
    declared: frozenset[str]


@dataclass
class Context:
    """One reconcile's view of the world. Build nothing here by hand: the runner does."""

    controller: str
    key: str
    reconcile_id: str
    clients: Clients
    kv: KVStore
    status: StatusReport
    sources: Mapping[str, Source]
    log: Any
    leading: Any = None
    indexes: Mapping[str, CacheIndex] = field(default_factory=dict)

    @property
    def consul(self) -> ConsulReader:
        """Consul, read-only. Write through :attr:`kv` (fenced while leading)."""
        return self.clients.reader

    @property
    def unfenced_consul(self) -> ConsulClient:
        """The full Consul client. Its writes are NOT fenced: a deposed leader's write lands.

        For what fencing cannot express (session or catalog operations); never for KV values a
        controller owns.
        """
        return self.clients.consul

    @property
    def nomad(self) -> NomadClient:
        if self.clients.nomad is None:
            raise ConfigError(f"{self.controller}: uses ctx.nomad; declare needs={{'nomad'}}")
        return self.clients.nomad

    @property
    def elb(self) -> ELBClient:
        if self.clients.elb is None:
            raise ConfigError(f"{self.controller}: uses ctx.elb; declare needs={{'elb'}}")
        return self.clients.elb

    @property
    def is_leader(self) -> bool:
        """True while this replica leads (always, for a controller without leadership)."""
        return True if self.leading is None else bool(self.leading())

    def cache(self, watch: str) -> Mapping[str, Any]:
        """The warm cache of one of this controller's watches (by watch name)."""
        try:
            return self.sources[watch].items()
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none"
            raise ConfigError(f"{self.controller}: no watch named {watch!r} ({known})") from None

    def index(self, watch: str, name: str, value: str) -> list[Any]:
        """The items of ``watch`` whose index ``name`` holds ``value`` (client-go's
        ``ByIndex``): a per-user reconcile's lookup in O(matches), not a scan of the cache."""
        cache = self.cache(watch)
        index = self.indexes.get(watch)
        if index is None or name not in index.names:
            raise ConfigError(f"{self.controller}: watch {watch!r} declares no index {name!r}")
        return [cache[i] for i in sorted(index.ids(name, value)) if i in cache]

    def index_values(self, watch: str, name: str) -> frozenset[str]:
        """Every value index ``name`` of ``watch`` holds now (say, every user seen)."""
        index = self.indexes.get(watch)
        if index is None or name not in index.names:
            raise ConfigError(f"{self.controller}: watch {watch!r} declares no index {name!r}")
        return index.values(name)

    def parse(
        self,
        model: type[M],
        raw: KVEntry | bytes | str | None,
        *,
        key: str | None = None,
        report_as: str | None = None,
    ) -> M | None:
        """Decode one input, or report it and return None (the caller skips that input).

        An invalid value is logged, counted in ``reconciler_invalid_input_total{kind}`` and
        reported as an ``Invalid`` status entry under ``report_as`` (default: the work key), so
        in an aggregate (one reconcile over every user) one bad value skips one user only.
        """
        index = None
        if isinstance(raw, KVEntry):
            key = key or raw.key
            index = raw.modify_index
            raw = raw.value
        try:
            return decode(model, raw, key=key)
        except InvalidValue as exc:
            metrics.INVALID_INPUT.labels(controller=self.controller, kind=exc.kind).inc()
            self.log.warning("skipping invalid input", input=key, kind=exc.kind, error=str(exc))
            self.status.set("Invalid", str(exc), key=report_as, observed_index=index)
            return None
