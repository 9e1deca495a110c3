"""Controllers used by the CLI and manager tests (loaded with ``--import``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from reconciler.controller import Context, Controller, Watch, strip_prefix
from reconciler.sources.memory import MemorySource


class SampleInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int


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
    models={"sample-input": SampleInput},
)
beta = Controller(name="sample-beta", reconcile=_reconcile, watches=[], workers=2)

CONTROLLERS = [alpha, beta]
