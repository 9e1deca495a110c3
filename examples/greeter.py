"""A complete controller in one file: ``examples/greetings/in/<name>`` -> ``.../out/<name>``.

Each input is ``{"greeting": "hello"}``; the controller writes ``{"message": "hello, <name>!"}``
for it and deletes the output once the input is gone. It is level-based (it re-reads both keys
and converges, whatever the event was), idempotent (it writes only when the bytes differ), and
leader-elected with fenced writes. ``docs/adding-a-controller.md`` walks through it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from reconciler import watches
from reconciler.controller import Context, Controller
from reconciler.kv import decode, encode

IN = "examples/greetings/in/"
OUT = "examples/greetings/out/"


class Greeting(BaseModel):
    """The input a user writes."""

    model_config = ConfigDict(extra="forbid")
    greeting: str = Field(min_length=1, max_length=100)


class Message(BaseModel):
    """What the controller owns and writes."""

    model_config = ConfigDict(extra="forbid")
    message: str


KV_MODELS: dict[str, type[BaseModel]] = {"example-greeting": Greeting, "example-message": Message}


def plan(name: str, greeting: Greeting | None) -> Message | None:
    """The pure part: desired output for this input (None: there should be no output)."""
    return None if greeting is None else Message(message=f"{greeting.greeting}, {name}!")


async def reconcile(ctx: Context, name: str) -> None:
    source = await ctx.kv.get(IN + name)
    greeting = None if source is None else decode(Greeting, source.value, key=IN + name)
    desired = plan(name, greeting)
    current = await ctx.kv.get(OUT + name)
    if desired is None:
        if current is not None:
            await ctx.kv.delete(OUT + name)
            ctx.log.info("removed greeting", name=name)
        return
    wanted = encode(desired)
    if current is None or current.value != wanted:
        await ctx.kv.put(OUT + name, wanted)
        ctx.log.info("wrote greeting", name=name)


controller = Controller(
    name="greeter",
    description="Turns examples/greetings/in/<name> into examples/greetings/out/<name>",
    reconcile=reconcile,
    watches=[watches.kv(IN), watches.kv(OUT)],
    writes=[OUT + "<name>"],
    resync_period=60,
)
