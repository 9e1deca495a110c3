"""``manticore/requests/data/<id>``: what a user asked for.

Written by the intake API (or anyone), deleted on departure. Every field is optional: the
defaults come from configuration, and ``{}`` is a valid request. The version strings become
Docker image tags and job variables, so they are limited to a tag-safe alphabet.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]


class CoreOptions(BaseModel):
    """Which sdl_core image: ``<build>-<version>`` in Manticore's image naming."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Version | None = Field(default=None, description="sdl_core version, e.g. 8.2.0")
    build: Version | None = Field(default=None, description="sdl_core build flavour, e.g. default")


class HMIOptions(BaseModel):
    """Which HMI image: ``manticore-hmi-<type>:<version>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Version | None = Field(default=None, description="HMI type, e.g. generic")
    version: Version | None = Field(default=None, description="HMI version")


class UserRequest(BaseModel):
    """One user's request for a core + HMI pair."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    core: CoreOptions | None = None
    hmi: HMIOptions | None = None
    requested_at: dt.datetime | None = Field(
        default=None, description="When the request was first made (UTC), set by the intake API"
    )
    last_activity: dt.datetime | None = Field(
        default=None,
        description="Last user activity (UTC), set by the intake API; resets the usage clock "
        "when RESET_TIMER_ALLOWED",
    )
