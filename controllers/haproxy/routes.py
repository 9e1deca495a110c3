"""``haproxy/`` as written by haproxy-kv -> the routing table HAProxy may be given, and why not.

Nothing reaches HAProxy (its configuration, a map file or a runtime command) unless it went
through here first. Every value is checked against the KV models of :mod:`controllers.api.haproxy`
(addresses, ports, subdomains, the domain) and against what this HAProxy can serve (a TCP port
inside ``TCP_PORT_RANGE``, no route back into HAProxy itself). What fails is left out and
reported as a :class:`Rejection` (the controller logs and counts each one), never used, and never
costs another user a route: one user's bad value drops that user only, one bad route that route
only.

Two users claiming the same subdomain or TCP port is a conflict: the user already routed there
keeps it (a newcomer cannot take over someone's traffic), otherwise the older KV entry
(``CreateIndex``) wins; the loser's route is rejected.

Parsing is incremental: a user's value is decoded again only when its ``ModifyIndex`` changes, so
reading the whole prefix on every change stays cheap at thousands of users, and a bad value is
reported once per write rather than once per reconcile.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from controllers.api.haproxy import Address, DomainName, UserRoutes
from controllers.api.ids import (
    HAPROXY_DATA_PREFIX,
    HAPROXY_DOMAIN_KEY,
    HAPROXY_MAIN_PORT_KEY,
    HAPROXY_PREFIX,
    HAPROXY_WEB_APP_PREFIX,
    user_of_key,
)
from controllers.settings import HAProxySettings
from reconciler.clients.consul import KVEntry
from reconciler.kv import decode
from reconciler.result import InvalidValue

_ADDRESS: TypeAdapter[str] = TypeAdapter(Address)
_DOMAIN: TypeAdapter[str] = TypeAdapter(DomainName)

# Kinds of rejection, the ``kind`` label of reconciler_invalid_input_total.
KINDS = (
    "malformed-json",
    "schema",
    "empty",
    "oversized",
    "key",
    "domain",
    "main-port",
    "web-app-address",
    "tcp-port-out-of-range",
    "loop",
    "conflict",
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one route goes: a user's service at ``address`` (``ip:port``, IPv6 in brackets)."""

    user: str
    role: str
    address: str


@dataclass(frozen=True)
class Routing:
    """Everything HAProxy routes, every value validated. Equal tables route identically."""

    domain: str
    main_port: int
    web_app: tuple[str, ...] = ()
    http: Mapping[str, Target] = field(default_factory=dict)
    tcp: Mapping[int, Target] = field(default_factory=dict)

    def host(self, subdomain: str) -> str:
        return f"{subdomain}.{self.domain}"

    def users(self) -> set[str]:
        return {t.user for t in self.http.values()} | {t.user for t in self.tcp.values()}


@dataclass(frozen=True, slots=True)
class Rejection:
    """One value (or one route of a value) left out, and why."""

    key: str
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One user's value after validation: the routes it may have, and what was refused."""

    http: tuple[tuple[str, Target], ...]
    tcp: tuple[tuple[int, Target], ...]
    rejections: tuple[Rejection, ...]


def split_address(address: str) -> tuple[str, int]:
    """``"10.0.0.5:80"`` -> ``("10.0.0.5", 80)``; ``"[::1]:80"`` -> ``("::1", 80)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def parse_port(text: str) -> int | None:
    """A port written as plain decimal text (no sign, no leading zero, no space), else None."""
    if not text.isascii() or not text.isdigit() or text != str(int(text)):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def _text(entry: KVEntry) -> str | None:
    if entry.value is None:
        return None
    try:
        return entry.value.decode("ascii")
    except UnicodeDecodeError:
        return None


class RoutingReader:
    """Turns the cache of the ``haproxy/`` watch into a :class:`Routing` (see the module doc)."""

    def __init__(self, settings: HAProxySettings) -> None:
        self.settings = settings
        self._memo: dict[str, tuple[tuple[int, int], _Parsed]] = {}
        self._reported: set[Rejection] = set()

    def read(
        self, entries: Mapping[str, KVEntry], *, current: Routing | None = None
    ) -> tuple[Routing, list[Rejection]]:
        """The routing table, and the rejections not reported by an earlier call.

        ``current`` is what HAProxy routes now: in a conflict its holder keeps the route.
        """
        rejections: list[Rejection] = []
        domain = self._domain(entries.get(HAPROXY_DOMAIN_KEY), rejections)
        main_port = self._main_port(entries.get(HAPROXY_MAIN_PORT_KEY), rejections)
        web_app: set[str] = set()
        users: list[tuple[int, str, _Parsed]] = []
        seen: set[str] = set()
        for key, entry in entries.items():
            if key.startswith(HAPROXY_WEB_APP_PREFIX):
                address = self._web_app_address(entry, rejections)
                if address is not None:
                    web_app.add(address)
            elif key.startswith(HAPROXY_DATA_PREFIX):
                user = user_of_key(HAPROXY_DATA_PREFIX, key)
                if user is None:
                    rejections.append(
                        Rejection(key, "key", "not haproxy/data/<user id> with [A-Za-z0-9-]{1,64}")
                    )
                    continue
                seen.add(key)
                parsed = self._user(key, user, entry, main_port)
                rejections.extend(parsed.rejections)
                users.append((entry.create_index, user, parsed))
            elif key not in (HAPROXY_DOMAIN_KEY, HAPROXY_MAIN_PORT_KEY) and key != HAPROXY_PREFIX:
                # haproxy/ holds only what haproxy-kv writes; anything else is ignored, said once.
                rejections.append(Rejection(key, "key", "not a key haproxy-kv writes"))
        for gone in set(self._memo) - seen:
            del self._memo[gone]
        http, tcp = self._resolve(users, current, rejections)
        routing = Routing(
            domain=domain, main_port=main_port, web_app=tuple(sorted(web_app)), http=http, tcp=tcp
        )
        fresh = [r for r in rejections if r not in self._reported]
        # Remember only what is still true, so a value that turns bad again is reported again.
        self._reported = set(rejections)
        return routing, fresh

    # -- the plain-text keys ----------------------------------------------------------------

    def _domain(self, entry: KVEntry | None, rejections: list[Rejection]) -> str:
        if entry is None:
            return self.settings.domain_name
        text = _text(entry)
        try:
            return _DOMAIN.validate_python(text)
        except ValidationError:
            rejections.append(
                Rejection(
                    entry.key,
                    "domain",
                    f"not a lowercase DNS name: {text!r:.80}; "
                    f"using DOMAIN_NAME={self.settings.domain_name}",
                )
            )
            return self.settings.domain_name

    def _main_port(self, entry: KVEntry | None, rejections: list[Rejection]) -> int:
        fallback = self.settings.main_port
        if entry is None:
            return fallback
        text = _text(entry) or ""
        port = parse_port(text)
        problem = None
        if port is None:
            problem = f"not a port: {text!r:.80}"
        elif port in self.settings.tcp_port_range:
            problem = f"{port} lies inside the TCP port range"
        elif port == self.settings.stats_port:
            problem = f"{port} is HAProxy's stats port"
        if problem is not None or port is None:
            rejections.append(
                Rejection(
                    entry.key, "main-port", f"{problem}; using HAPROXY_HTTP_LISTEN={fallback}"
                )
            )
            return fallback
        return port

    def _web_app_address(self, entry: KVEntry, rejections: list[Rejection]) -> str | None:
        text = _text(entry)
        try:
            address = _ADDRESS.validate_python(text)
        except ValidationError:
            rejections.append(Rejection(entry.key, "web-app-address", f"not ip:port: {text!r:.80}"))
            return None
        return address

    # -- users ------------------------------------------------------------------------------

    def _user(self, key: str, user: str, entry: KVEntry, main_port: int) -> _Parsed:
        stamp = (entry.modify_index, main_port)
        memo = self._memo.get(key)
        if memo is not None and memo[0] == stamp and entry.modify_index:
            return memo[1]
        parsed = self._parse_user(key, user, entry, main_port)
        self._memo[key] = (stamp, parsed)
        return parsed

    def _parse_user(self, key: str, user: str, entry: KVEntry, main_port: int) -> _Parsed:
        try:
            routes = decode(UserRoutes, entry.value, key=key)
        except InvalidValue as exc:
            return _Parsed((), (), (Rejection(key, exc.kind, str(exc)),))
        rejections: list[Rejection] = []
        http: dict[str, Target] = {}
        refused_subdomains: set[str] = set()
        for route in routes.http:
            target = Target(user, route.role, route.address)
            if self._loops(route.address, main_port):
                rejections.append(
                    Rejection(key, "loop", f"{route.subdomain} -> {route.address} is HAProxy")
                )
                continue
            previous = http.get(route.subdomain)
            if previous is not None and previous != target:
                refused_subdomains.add(route.subdomain)
            http[route.subdomain] = target
        for subdomain in sorted(refused_subdomains):
            del http[subdomain]
            rejections.append(
                Rejection(key, "conflict", f"subdomain {subdomain} listed twice, differently")
            )
        tcp: dict[int, Target] = {}
        refused_ports: set[int] = set()
        port_range = self.settings.tcp_port_range
        for tcp_route in routes.tcp:
            target = Target(user, tcp_route.role, tcp_route.address)
            if tcp_route.port not in port_range:
                rejections.append(
                    Rejection(
                        key,
                        "tcp-port-out-of-range",
                        f"TCP port {tcp_route.port} outside {port_range.start}-"
                        f"{port_range.stop - 1}",
                    )
                )
                continue
            if self._loops(tcp_route.address, main_port):
                rejections.append(
                    Rejection(key, "loop", f"{tcp_route.port} -> {tcp_route.address} is HAProxy")
                )
                continue
            previous = tcp.get(tcp_route.port)
            if previous is not None and previous != target:
                refused_ports.add(tcp_route.port)
            tcp[tcp_route.port] = target
        for port in sorted(refused_ports):
            del tcp[port]
            rejections.append(Rejection(key, "conflict", f"TCP port {port} listed twice"))
        return _Parsed(tuple(sorted(http.items())), tuple(sorted(tcp.items())), tuple(rejections))

    def _loops(self, address: str, main_port: int) -> bool:
        """True for an address that is one of HAProxy's own frontends (a routing loop)."""
        host, port = split_address(address)
        stats = self.settings.stats_port
        if port != main_port and port not in self.settings.tcp_port_range and port != stats:
            return False
        ip = ipaddress.ip_address(host)
        bind = ipaddress.ip_address(self.settings.bind_address)
        return ip.is_loopback or ip.is_unspecified or ip == bind or bind.is_unspecified

    def _resolve(
        self,
        users: list[tuple[int, str, _Parsed]],
        current: Routing | None,
        rejections: list[Rejection],
    ) -> tuple[dict[str, Target], dict[int, Target]]:
        """Give each subdomain and port to one user (the current holder, else the oldest)."""
        http: dict[str, tuple[int, Target]] = {}
        tcp: dict[int, tuple[int, Target]] = {}
        held_http = current.http if current is not None else {}
        held_tcp = current.tcp if current is not None else {}
        for create_index, _, parsed in users:
            for subdomain, target in parsed.http:
                _claim(http, subdomain, create_index, target, held_http, rejections)
            for port, target in parsed.tcp:
                _claim(tcp, port, create_index, target, held_tcp, rejections)
        return (
            {s: target for s, (_, target) in http.items()},
            {p: target for p, (_, target) in tcp.items()},
        )


K = TypeVar("K", str, int)


def _claim(
    table: dict[K, tuple[int, Target]],
    what: K,
    create_index: int,
    target: Target,
    held: Mapping[K, Target],
    rejections: list[Rejection],
) -> None:
    """Put ``target`` in ``table`` unless a better claim holds ``what``; reject the loser."""
    existing = table.get(what)
    if existing is None:
        table[what] = (create_index, target)
        return
    holder = held.get(what)
    holder_user = holder.user if holder is not None else None

    def rank(claim: tuple[int, Target]) -> tuple[int, int, str]:
        return (0 if claim[1].user == holder_user else 1, claim[0], claim[1].user)

    challenger = (create_index, target)
    winner, loser = sorted((existing, challenger), key=rank)
    table[what] = winner
    label = f"subdomain {what}" if isinstance(what, str) else f"TCP port {what}"
    rejections.append(
        Rejection(
            f"{HAPROXY_DATA_PREFIX}{loser[1].user}",
            "conflict",
            f"{label} already belongs to user {winner[1].user}",
        )
    )
