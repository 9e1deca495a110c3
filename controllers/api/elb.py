"""``manticore/elb/data/<id>``: which load balancer a user's TCP listeners are on.

Written by the elb controller once the user's listeners exist on that load balancer, deleted when
they are removed. With several load balancers (``ELB_MANTICORE_NAME=a,b``) users are spread over
them, so this record is how anyone (the intake API telling a user where to connect, an SRE)
learns which one a user got: all of a user's listeners are on one load balancer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from controllers.api.haproxy import DOMAIN_PATTERN, Port, Role

# Classic ELB names: 1-32 alphanumerics and hyphens, not starting or ending with a hyphen.
LB_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?$"
LoadBalancerName = Annotated[str, StringConstraints(pattern=LB_NAME_PATTERN)]


class UserListener(BaseModel):
    """``protocol port -> TCP instance_port`` for the user's service ``role``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    port: Port
    instance_port: Port
    protocol: Literal["TCP", "SSL"] = "TCP"


class ListenerRecord(BaseModel):
    """The user's TCP listeners, all on ``load_balancer``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    load_balancer: LoadBalancerName
    dns_name: Annotated[str, StringConstraints(pattern=DOMAIN_PATTERN.replace("a-z", "A-Za-z"))] = (
        Field(default="", max_length=253, description="The load balancer's DNS name")
    )
    listeners: list[UserListener] = Field(min_length=1)
