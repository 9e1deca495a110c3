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


def plan(name: str, greeting: Greeting | None) -> Message | None:
    """The pure part: desired output for this input (None: there should be no output)."""
    return None if greeting is None else Message(message=f"{greeting.greeting}, {name}!")


async def reconcile(ctx: Context, name: str) -> None:
    greeting = await ctx.kv.read(IN + name, Greeting)  # an invalid value: reported, not retried
    desired = plan(name, greeting.value if greeting else None)
    if desired is None:
        if await ctx.kv.delete_if_present(OUT + name):
            ctx.log.info("removed greeting", name=name)
    elif await ctx.kv.put_if_changed(OUT + name, desired):
        ctx.log.info("wrote greeting", name=name)


controller = Controller(
    name="greeter",
    description="Turns examples/greetings/in/<name> into examples/greetings/out/<name>",
    reconcile=reconcile,
    watches=[watches.kv(IN), watches.kv(OUT)],
    writes=[OUT + "<name>"],
    models={"example-greeting": Greeting, "example-message": Message},
    resync_period=60,
)
