"""``manticore/elb/data/<id>``: which load balancer and listener port a user got."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Classic ELB names: 1-32 alphanumerics and hyphens, not starting or ending with a hyphen.
LB_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?$"
LoadBalancerName = Annotated[str, StringConstraints(pattern=LB_NAME_PATTERN)]


class ListenerRecord(BaseModel):
    """The user's TCP listener: ``protocol port -> instance port`` on ``load_balancer``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    load_balancer: LoadBalancerName
    port: int = Field(ge=1, le=65535)
    instance_port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "SSL"] = "TCP"
