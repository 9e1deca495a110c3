"""A controller used by the benchmarks: it watches every ``bench-svc-*`` service by pattern.

``reconciler --import bench.watchers run bench-watch`` runs it in its own process, so the
benchmark can count the Consul connections and the memory of exactly that process.
"""

from __future__ import annotations

from reconciler import watches
from reconciler.clients.consul import ServiceInstance
from reconciler.controller import Context, Controller


def user_of(instance: ServiceInstance) -> list[str]:
    return [instance.meta.get("user", instance.service)]


async def reconcile(ctx: Context, key: str) -> None:
    return None


controller = Controller(
    name="bench-watch",
    description="Every bench-svc-* service by pattern, one key per user",
    reconcile=reconcile,
    watches=[watches.service_health(pattern=r"bench-svc-.*", to_keys=user_of)],
    resync_period=None,
)
