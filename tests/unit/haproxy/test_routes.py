"""Reading ``haproxy/`` into a routing table: what is validated, refused, reported, and kept."""

from __future__ import annotations

import json
from typing import Any

from controllers.haproxy.routes import Routing, RoutingReader, Target
from controllers.settings import HAProxySettings, Settings
from reconciler.clients.consul import KVEntry

SUB_A = "a" * 16
SUB_B = "b" * 16


def settings(**env: str) -> HAProxySettings:
    base = {
        "DOMAIN_NAME": "fallback.test",
        "HAPROXY_HTTP_LISTEN": "8080",
        "TCP_PORT_RANGE_START": "20000",
        "TCP_PORT_RANGE_END": "20009",
        "MANTICORE_HAPROXY_STATS_PORT": "8404",
    }
    return Settings.from_env({**base, **env}).haproxy


def entry(key: str, value: bytes | str | None, index: int = 1, create: int = 1) -> KVEntry:
    raw = value.encode() if isinstance(value, str) else value
    return KVEntry(key=key, value=raw, create_index=create, modify_index=index)


def routes(http: list[tuple[str, str]] = (), tcp: list[tuple[int, str]] = ()) -> bytes:  # type: ignore[assignment]
    value: dict[str, Any] = {
        "http": [{"subdomain": s, "address": a, "role": "hmi"} for s, a in http],
        "tcp": [{"port": p, "address": a, "role": "core"} for p, a in tcp],
    }
    return json.dumps(value).encode()


def read(entries: list[KVEntry], reader: RoutingReader | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    reader = reader or RoutingReader(settings())
    return reader.read({e.key: e for e in entries}, **kw)


def test_a_complete_prefix_becomes_the_routing_table() -> None:
    table, rejected = read(
        [
            entry("haproxy/domainName", "m.example.com"),
            entry("haproxy/mainPort", "8080"),
            entry("haproxy/webAppAddresses/0", "10.0.0.1:4000"),
            entry("haproxy/webAppAddresses/1", "[::1]:4001"),
            entry(
                "haproxy/data/alice",
                routes([(SUB_A, "10.0.0.5:23001")], [(20001, "10.0.0.5:24000")]),
            ),
        ]
    )
    assert rejected == []
    assert table == Routing(
        domain="m.example.com",
        main_port=8080,
        web_app=("10.0.0.1:4000", "[::1]:4001"),
        http={SUB_A: Target("alice", "hmi", "10.0.0.5:23001")},
        tcp={20001: Target("alice", "core", "10.0.0.5:24000")},
    )
    assert table.host(SUB_A) == f"{SUB_A}.m.example.com"


def test_missing_plain_keys_fall_back_to_the_settings() -> None:
    table, rejected = read([])
    assert (table.domain, table.main_port, rejected) == ("fallback.test", 8080, [])


def test_hostile_plain_values_are_refused_and_the_settings_used() -> None:
    table, rejected = read(
        [
            entry("haproxy/domainName", "m.example.com\n    bind *:1"),
            entry("haproxy/mainPort", "80 80"),
            entry("haproxy/webAppAddresses/0", "10.0.0.1:4000 check"),
            entry("haproxy/webAppAddresses/1", "10.0.0.2:4000"),
        ]
    )
    assert (table.domain, table.main_port, table.web_app) == (
        "fallback.test",
        8080,
        ("10.0.0.2:4000",),
    )
    assert sorted(r.kind for r in rejected) == ["domain", "main-port", "web-app-address"]


def test_main_port_inside_the_tcp_range_or_on_stats_is_refused() -> None:
    for text in ("20005", "8404", "0", "65536", "+80", "080", "\uff18\uff10"):
        table, rejected = read([entry("haproxy/mainPort", text)])
        assert table.main_port == 8080, text
        assert [r.kind for r in rejected] == ["main-port"], text


def test_one_bad_user_costs_only_that_user() -> None:
    good = routes([(SUB_A, "10.0.0.5:80")])
    cases = {
        "malformed": (b"{not json", "malformed-json"),
        "extra": (b'{"http": [], "tcp": [], "admin": true}', "schema"),
        "newline": (routes([("b" * 15 + "\n", "10.0.0.6:80")]), "schema"),
        "space": (routes([(SUB_B, "10.0.0.6:80 check")]), "schema"),
        "quote": (routes([(SUB_B, '10.0.0.6:80"')]), "schema"),
        "hash": (routes([(SUB_B + "#", "10.0.0.6:80")]), "schema"),
        "empty": (b"", "empty"),
    }
    for name, (value, kind) in cases.items():
        table, rejected = read(
            [entry("haproxy/data/alice", good), entry(f"haproxy/data/{name}", value)]
        )
        assert table.users() == {"alice"}, name
        assert [(r.key, r.kind) for r in rejected] == [(f"haproxy/data/{name}", kind)], name


def test_keys_that_are_not_users_are_refused() -> None:
    table, rejected = read(
        [
            entry("haproxy/data/a.b", routes([(SUB_A, "10.0.0.5:80")])),
            entry("haproxy/data/alice/extra", routes([(SUB_A, "10.0.0.5:80")])),
            entry("haproxy/somethingElse", "x"),
        ]
    )
    assert table.http == {}
    assert {r.kind for r in rejected} == {"key"}
    assert len(rejected) == 3


def test_tcp_ports_outside_the_range_and_loops_are_refused_route_by_route() -> None:
    value = routes(
        [(SUB_A, "10.0.0.5:80"), (SUB_B, "127.0.0.1:8080")],
        [(19999, "10.0.0.5:24000"), (20001, "10.0.0.5:24000"), (20002, "127.0.0.1:20003")],
    )
    table, rejected = read([entry("haproxy/data/alice", value)])
    assert list(table.http) == [SUB_A]
    assert list(table.tcp) == [20001]
    assert sorted(r.kind for r in rejected) == ["loop", "loop", "tcp-port-out-of-range"]


def test_a_user_listing_one_subdomain_twice_differently_loses_it() -> None:
    value = routes([(SUB_A, "10.0.0.5:80"), (SUB_A, "10.0.0.6:80"), (SUB_B, "10.0.0.5:81")])
    table, rejected = read([entry("haproxy/data/alice", value)])
    assert list(table.http) == [SUB_B]
    assert [r.kind for r in rejected] == ["conflict"]


def test_conflicts_go_to_the_current_holder_then_to_the_older_entry() -> None:
    alice = entry(
        "haproxy/data/alice", routes([(SUB_A, "10.0.0.5:80")], [(20001, "10.0.0.5:1")]), create=10
    )
    mallory = entry(
        "haproxy/data/mallory", routes([(SUB_A, "10.0.0.9:80")], [(20001, "10.0.0.9:1")]), create=5
    )
    table, rejected = read([alice, mallory])
    # Nobody holds it yet: the older entry wins.
    assert table.http[SUB_A].user == "mallory"
    assert table.tcp[20001].user == "mallory"
    assert {r.key for r in rejected} == {"haproxy/data/alice"}
    # Alice already routed there: a newcomer, however old its entry, cannot take it over.
    held = Routing(
        "fallback.test",
        8080,
        http={SUB_A: Target("alice", "hmi", "10.0.0.5:80")},
        tcp={20001: Target("alice", "core", "10.0.0.5:1")},
    )
    table, rejected = read([alice, mallory], current=held)
    assert table.http[SUB_A].user == "alice"
    assert table.tcp[20001].user == "alice"
    assert {r.key for r in rejected} == {"haproxy/data/mallory"}


def test_a_rejection_is_reported_once_per_write_and_again_when_it_comes_back() -> None:
    reader = RoutingReader(settings())
    bad = entry("haproxy/data/bob", b"{", index=3)
    assert len(read([bad], reader)[1]) == 1
    assert read([bad], reader)[1] == []
    fixed = entry("haproxy/data/bob", routes([(SUB_B, "10.0.0.6:80")]), index=4)
    table, rejected = read([fixed], reader)
    assert (list(table.http), rejected) == ([SUB_B], [])
    assert len(read([entry("haproxy/data/bob", b"{", index=5)], reader)[1]) == 1


def test_unchanged_values_are_not_parsed_again() -> None:
    reader = RoutingReader(settings())
    first = entry("haproxy/data/alice", routes([(SUB_A, "10.0.0.5:80")]), index=7)
    read([first], reader)
    # Same ModifyIndex, different bytes: the memo answers (Consul never does this).
    stale = entry("haproxy/data/alice", b"{", index=7)
    table, rejected = read([stale], reader)
    assert (list(table.http), rejected) == ([SUB_A], [])
