"""``haproxy/``: what HAProxy needs to route every user, and nothing it could be tricked by.

``haproxy/data/<id>`` holds one user's routes: an unguessable subdomain per HTTP service and one
external TCP port per TCP service. ``haproxy/webAppAddresses/<i>``, ``haproxy/domainName`` and
``haproxy/mainPort`` are plain text, as Manticore's consul-template template reads them.

The random names and ports are reserved before use in ``manticore/routes/data/<id>``
(:class:`RouteReservation`), and each one is also *claimed* under its own key,
``manticore/routes/tcp/<port>`` and ``manticore/routes/subdomains/<subdomain>`` (plain text: the
user id), created in the same Consul transaction with ``cas=0``. Consul then refuses a second
claim of the same port or subdomain whatever the number of workers, replicas or stale caches:
the claim keys are a unique index, as a database has one.

Every field that ends up in an HAProxy configuration, map file or runtime command is validated
here to an alphabet that cannot inject anything (no spaces, quotes, ``#``, newlines): an IPv4
or bracket-free IPv6 address, a port in range, a ``[a-z0-9]`` subdomain, a DNS domain.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

SUBDOMAIN_PATTERN = r"^[a-z0-9]{16,63}$"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_PATTERN = rf"^{_LABEL}(?:\.{_LABEL})*$"
ROLE_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise ValueError(f"not an IP address: {text!r}") from exc


def _ip_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
        raise ValueError(f"expected ip:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ip = ipaddress.ip_address(host)  # raises ValueError
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


IPAddress = Annotated[str, AfterValidator(_ip)]
Address = Annotated[str, AfterValidator(_ip_port)]
Subdomain = Annotated[str, StringConstraints(pattern=SUBDOMAIN_PATTERN)]
DomainName = Annotated[str, StringConstraints(pattern=DOMAIN_PATTERN, max_length=253)]
Role = Annotated[str, StringConstraints(pattern=ROLE_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]


class HTTPRoute(BaseModel):
    """``<subdomain>.<domainName>`` on HAProxy's main port -> ``address``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    subdomain: Subdomain
    address: Address
    role: Role


class TCPRoute(BaseModel):
    """HAProxy's external TCP ``port`` -> ``address``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    port: Port
    address: Address
    role: Role


class UserRoutes(BaseModel):
    """``haproxy/data/<id>``: every route of one user."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    http: list[HTTPRoute] = Field(default_factory=list)
    tcp: list[TCPRoute] = Field(default_factory=list)


ROUTES_DATA_PREFIX = "manticore/routes/data/"
ROUTES_TCP_PREFIX = "manticore/routes/tcp/"
ROUTES_SUBDOMAIN_PREFIX = "manticore/routes/subdomains/"


class RouteReservation(BaseModel):
    """``manticore/routes/data/<id>``: the random names and ports a user keeps for life.

    Generated once and stored before use, so a restart, a new leader or an allocation that moves
    keeps the user's subdomains and TCP port; deleted when the user leaves.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    subdomains: dict[Role, Subdomain] = Field(default_factory=dict)
    tcp_ports: dict[Role, Port] = Field(default_factory=dict)
