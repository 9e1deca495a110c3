"""What the KV contract says about one user, as the user (and an operator) should see it.

The intake API and ``reconciler status`` read the same prefixes and must tell the same story,
so the story is told once, here, as a pure function of decoded KV values:

============  =================================================================================
state         when
============  =================================================================================
``waiting``   a request exists and the user is not claimed (``position`` = users ahead, 0 =
              next; ``None`` until the waitlist has listed the user)
``starting``  claimed, but the routes (and, with an ELB, the user's listener) are not all there
``ready``     claimed, and the HMI route and core's TCP port are published
``expiring``  ready (or starting) and the expiry controller has issued the warning
============  =================================================================================

A user without a request has no status (the request is gone: the user left or expired).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from controllers.api.elb import ListenerRecord
from controllers.api.expiry import ExpiryRecord
from controllers.api.haproxy import UserRoutes
from controllers.api.requests import CoreOptions, HMIOptions, UserRequest
from controllers.api.waiting import WaitingEntry, WaitingList

State = Literal["waiting", "starting", "ready", "expiring"]
STATES: tuple[State, ...] = ("waiting", "starting", "ready", "expiring")

HMI_ROLE = "hmi"
BROKER_ROLE = "broker"
CORE_ROLE = "core"


class Addresses(BaseModel):
    """Where a ready user reaches their pair."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hmi_url: str = Field(description="The HMI, in a browser")
    broker_url: str | None = Field(default=None, description="The HMI's message broker")
    core_host: str = Field(description="Host of SDL core's TCP port (the ELB or HAProxy)")
    core_port: int = Field(ge=1, le=65535, description="SDL core's TCP port")
    core_tcp: str = Field(description="core_host:core_port, for the SDL app")
    http: dict[str, str] = Field(
        default_factory=dict, description="Every HTTP service of the pair by role"
    )


class UserStatus(BaseModel):
    """One user's request as the intake API reports it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(description="The user id")
    state: State
    position: int | None = Field(
        default=None, ge=0, description="Waiting users ahead of this one (0: next in line)"
    )
    waiting: int | None = Field(default=None, ge=0, description="Users waiting in line")
    claimed: bool = Field(description="A core + HMI pair is (being) started for the user")
    core: CoreOptions | None = None
    hmi: HMIOptions | None = None
    requested_at: dt.datetime | None = None
    last_activity: dt.datetime | None = None
    addresses: Addresses | None = None
    warn_at: dt.datetime | None = Field(default=None, description="When the warning comes")
    expires_at: dt.datetime | None = Field(default=None, description="When the pair goes away")
    warned: bool = Field(default=False, description="The time is nearly up")
    reset_allowed: bool = Field(
        default=False, description="Reporting activity restarts the usage clock"
    )


@dataclass(frozen=True)
class PublicEndpoints:
    """How users reach HAProxy (or the ELB in front of it)."""

    domain: str
    http_scheme: Literal["http", "https"] = "http"
    http_port: int | None = None
    tcp_host: str | None = None
    elb: bool = False
    reset_allowed: bool = False

    def http_url(self, subdomain: str, *, websocket: bool = False) -> str:
        scheme: str = self.http_scheme
        if websocket:
            scheme = "wss" if scheme == "https" else "ws"
        default = 443 if self.http_scheme == "https" else 80
        port = "" if self.http_port in (None, default) else f":{self.http_port}"
        return f"{scheme}://{subdomain}.{self.domain}{port}"


def positions(waiting: WaitingList) -> dict[str, int]:
    """Every waiting (unclaimed) user -> how many wait ahead of them."""
    return {user: n for n, user in enumerate(waiting.waiting())}


def addresses(
    routes: UserRoutes | None,
    listener: ListenerRecord | None,
    public: PublicEndpoints,
) -> Addresses | None:
    """The user's addresses once everything they need is published, else None."""
    if routes is None:
        return None
    http = {route.role: public.http_url(route.subdomain) for route in routes.http}
    subdomains = {route.role: route.subdomain for route in routes.http}
    tcp = {route.role: route.port for route in routes.tcp}
    if HMI_ROLE not in subdomains or CORE_ROLE not in tcp:
        return None
    host = public.tcp_host or public.domain
    port = tcp[CORE_ROLE]
    if public.elb:
        # The user's TCP port is a listener on the load balancer the elb controller chose.
        found = {item.role: item for item in listener.listeners} if listener else {}
        if CORE_ROLE not in found:
            return None
        assert listener is not None
        port = found[CORE_ROLE].port
        host = public.tcp_host or listener.dns_name or public.domain
    broker = subdomains.get(BROKER_ROLE)
    return Addresses(
        hmi_url=http[HMI_ROLE],
        broker_url=public.http_url(broker, websocket=True) if broker else None,
        core_host=host,
        core_port=port,
        core_tcp=f"{host}:{port}",
        http=http,
    )


def user_status(
    user: str,
    request: UserRequest,
    *,
    entry: WaitingEntry | None,
    position: int | None,
    waiting: int | None,
    routes: UserRoutes | None,
    listener: ListenerRecord | None,
    expiry: ExpiryRecord | None,
    public: PublicEndpoints,
) -> UserStatus:
    """The status of a user who has a request (see the table above)."""
    claimed = entry is not None and entry.claimed
    found = addresses(routes, listener, public) if claimed else None
    state: State
    if not claimed:
        state = "waiting"
    elif expiry is not None and expiry.warned_at is not None:
        state = "expiring"
    elif found is None:
        state = "starting"
    else:
        state = "ready"
    return UserStatus(
        id=user,
        state=state,
        position=None if claimed else position,
        waiting=None if claimed else waiting,
        claimed=claimed,
        core=request.core,
        hmi=request.hmi,
        requested_at=request.requested_at,
        last_activity=request.last_activity,
        addresses=found,
        warn_at=expiry.warn_at if claimed and expiry else None,
        expires_at=expiry.expires_at if claimed and expiry else None,
        warned=bool(claimed and expiry and expiry.warned_at is not None),
        reset_allowed=public.reset_allowed,
    )


def waiting_counts(waiting: WaitingList) -> Mapping[str, int]:
    """``{"waiting": n, "claimed": m}``."""
    claimed = sum(1 for e in waiting.entries.values() if e.claimed)
    return {"waiting": len(waiting.entries) - claimed, "claimed": claimed}
