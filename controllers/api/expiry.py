"""``manticore/expiry/data/<id>``: a claimed user's usage clock, kept in Consul.

Written only by the expiry controller. The record is created once, when the controller first
sees the user claimed, and is what makes the usage limit survive restarts and leader changes:
a new leader reads the deadlines instead of starting anyone's clock again.

* ``started_at``: when the usage clock (re)started: the claim, or the user's last activity
  accepted under ``RESET_TIMER_ALLOWED``;
* ``warn_at`` = ``started_at + USAGE_DURATION``: from then on the user is warned;
* ``expires_at`` = ``warn_at + WARNING_DURATION``: then the user's request is deleted;
* ``warned_at``: when the warning was issued (the API reports the user as ``expiring``).

Times are UTC; comparing them needs no clock shared between processes beyond wall time.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, model_validator

EXPIRY_PREFIX = "manticore/expiry/data/"


class ExpiryRecord(BaseModel):
    """The deadlines of one claimed user."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    started_at: dt.datetime = Field(description="When the usage clock (re)started (UTC)")
    warn_at: dt.datetime = Field(description="When the user is warned (UTC)")
    expires_at: dt.datetime = Field(description="When the user's request is deleted (UTC)")
    warned_at: dt.datetime | None = Field(
        default=None, description="When the warning was issued (UTC); unset until then"
    )
    resets: int = Field(default=0, ge=0, description="How often activity restarted the clock")
    activity: dt.datetime | None = Field(
        default=None,
        description="The request's last_activity that last restarted the clock: each activity "
        "restarts it once, whatever the clocks of the API and this controller say",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ExpiryRecord:
        if not self.started_at <= self.warn_at <= self.expires_at:
            raise ValueError("expected started_at <= warn_at <= expires_at")
        return self
