"""What the intake API accepts and answers: the OpenAPI document is generated from these."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from controllers.api.ids import UserId
from controllers.api.requests import CoreOptions, HMIOptions
from controllers.api.view import UserStatus

__all__ = [
    "ActivityRecorded",
    "Health",
    "NewRequest",
    "Options",
    "Problem",
    "RequestAccepted",
    "UserStatus",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NewRequest(_Strict):
    """A request for a core + HMI pair."""

    id: UserId | None = Field(
        default=None,
        description="The user id; required without JWT_SECRET, else taken from the token "
        "(and, if given, it must be the token's)",
    )
    core: CoreOptions | None = None
    hmi: HMIOptions | None = None


class Links(_Strict):
    status: str
    events: str
    activity: str


class RequestAccepted(_Strict):
    """The stored request: the same answer however often it is posted."""

    id: UserId
    core: CoreOptions | None = None
    hmi: HMIOptions | None = None
    requested_at: dt.datetime | None = None
    links: Links


class ActivityRecorded(_Strict):
    id: UserId
    last_activity: dt.datetime
    reset_allowed: bool = Field(description="Whether activity restarts the usage clock")


class CoreChoices(_Strict):
    versions: list[str]
    builds: list[str]
    default_version: str
    default_build: str


class HMIChoices(_Strict):
    types: list[str]
    versions: list[str]
    default_type: str
    default_version: str


class UsageLimits(_Strict):
    usage_duration: float | None = Field(description="Seconds of use before the warning")
    warning_duration: float = Field(description="Seconds between the warning and the end")
    reset_timer_allowed: bool


class Options(_Strict):
    """What a user may ask for, and the rules they are under."""

    core: CoreChoices
    hmi: HMIChoices
    usage: UsageLimits
    jwt: bool = Field(description="Requests need a bearer token carrying user_id")


class Problem(_Strict):
    """An error: what was wrong, in words."""

    detail: str


class Health(_Strict):
    ok: bool
    sources: dict[str, bool] = Field(default_factory=dict)
    registered: bool | None = None
    streams: int = 0
