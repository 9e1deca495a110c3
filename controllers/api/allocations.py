"""``manticore/allocations/data/<id>``: where a user's running services are.

Written by the allocations controller from the passing Consul services of the user's job, one
entry per service role (``hmi``, ``broker``, ``core``...), each with the route kind the job
template gave it (``http`` routes by subdomain, ``tcp`` gets an external port, ``none`` is not
routed).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from controllers.api.haproxy import IPAddress, Role

RouteKind = Literal["http", "tcp", "none"]
NOMAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NomadId = Annotated[str, StringConstraints(pattern=NOMAD_ID_PATTERN)]


class ServiceAddress(BaseModel):
    """One service of the user: where it listens and how it is routed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: IPAddress
    port: int = Field(ge=1, le=65535)
    route: RouteKind


class UserAllocation(BaseModel):
    """Every passing service of one user's core + HMI allocation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    services: dict[Role, ServiceAddress]
    job: NomadId
    allocation: NomadId
    node: str = Field(max_length=128, description="Consul node name of the allocation")
