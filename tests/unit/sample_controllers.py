"""Controllers used by the CLI and manager tests (loaded with ``--import``)."""

from __future__ import annotations

from reconciler.controller import Context, Controller, Watch, strip_prefix
from reconciler.sources.memory import MemorySource

SOURCE = MemorySource("inputs")


async def _reconcile(ctx: Context, key: str) -> None:
    return None


alpha = Controller(
    name="sample-alpha",
    reconcile=_reconcile,
    watches=[Watch("inputs", lambda deps: SOURCE, strip_prefix("in/"), "memory: in/<id>")],
    writes=["out/<id>"],
    needs_leadership=False,
    description="a sample that watches in/ and writes out/",
)
beta = Controller(name="sample-beta", reconcile=_reconcile, watches=[], workers=2)

CONTROLLERS = [alpha, beta]
