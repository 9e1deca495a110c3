"""``manticore/waiting/data``: the FIFO waiting list, exactly as Manticore documents it.

One JSON object ``{"<id>": {"queue": n, "claimed": bool}}``: ``queue`` numbers are unique and
only their order matters; ``claimed`` is true once the user was given a core + HMI pair. Our own
optional fields follow those two.

Manticore keeps the whole list in that one value. Consul refuses values over 512 KiB, and at
about 40-100 bytes a user that limit falls between 5,000 and 13,000 users, so the list continues
on pages (``manticore/waiting/data-<n>``, same shape) once the first value is full; a reader that
knows only ``manticore/waiting/data`` sees the head of the list. The waitlist controller is the
only writer; the page layout and its limits are documented with the codec below.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, RootModel

from controllers.api.ids import UserId


class WaitingEntry(BaseModel):
    """One user in the waiting list."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    queue: int = Field(ge=0, description="Position key: unique, only the order matters")
    claimed: bool = Field(description="True once the user has been given a core + HMI pair")
    since: int | None = Field(
        default=None, ge=0, description="Unix time the user joined the list (queue wait metrics)"
    )


class WaitingPage(RootModel[dict[UserId, WaitingEntry]]):
    """One value of the waiting list: user id -> entry."""
