"""Hostile ``haproxy/`` contents, fuzzed: what is produced always passes ``haproxy -c`` and
routes only valid users.

Hypothesis writes a whole prefix the way an attacker (or a bug upstream) might: values with
newlines, spaces, quotes, ``#``, ``$``, unicode, out-of-range ports, extra fields, broken JSON,
keys that are not user ids, users claiming each other's subdomains and ports. The controller's
pure path (read, plan, render) must turn any of it into a configuration the real binary accepts,
whose map files hold only hosts and ports of values that passed the KV models, each leading to
that value's own address.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controllers.api.haproxy import UserRoutes
from controllers.api.ids import is_user_id
from controllers.haproxy import render
from controllers.haproxy.plan import SlotPolicy, plan
from controllers.haproxy.process import HAProxyProcess
from controllers.haproxy.routes import RoutingReader
from controllers.settings import HAProxySettings
from reconciler.clients.consul import KVEntry

from .conftest import make_settings

pytestmark = [pytest.mark.integration]

HOSTILE_TEXT = [
    "\n",
    "\r\n",
    " ",
    "\t",
    '"',
    "'",
    "#",
    "$",
    "\\",
    "{",
    "}",
    ";",
    "\x00",
    "é",
    "\u202e",
    "\n    bind *:1\nbackend x\n",
    " check inter 1s",
]

ip = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["127.0.0.1", "10.0.0.5", "0.0.0.0", "::", "::1"]),
)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


valid_address = st.builds(_address, ip, st.integers(1, 65535))
valid_subdomain = st.from_regex(r"\A[a-z0-9]{16,20}\Z")


def spoiled(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly a valid value; sometimes one with something hostile spliced in, or any text."""
    splice = st.builds(
        lambda v, bad, i: v[:i] + bad + v[i:],
        valid,
        st.sampled_from(HOSTILE_TEXT),
        st.integers(0, 20),
    )

    def pick(choice: int) -> st.SearchStrategy[str]:
        return valid if choice < 17 else splice if choice < 19 else st.text(max_size=30)

    return st.integers(0, 19).flatmap(pick)


def user_value(ports: range) -> st.SearchStrategy[bytes]:
    port = st.integers(0, 9).flatmap(
        lambda choice: st.sampled_from(list(ports)) if choice < 7 else st.integers(-5, 70000)
    )
    route_http = st.fixed_dictionaries(
        {
            "subdomain": spoiled(valid_subdomain),
            "address": spoiled(valid_address),
            "role": spoiled(st.sampled_from(["hmi", "broker"])),
        }
    )
    route_tcp = st.fixed_dictionaries(
        {
            "port": port,
            "address": spoiled(valid_address),
            "role": spoiled(st.just("core")),
        }
    )
    document = st.fixed_dictionaries(
        {
            "http": st.lists(route_http, min_size=1, max_size=3),
            "tcp": st.lists(route_tcp, max_size=2),
        },
        optional={"extra": st.text(max_size=5)},
    )
    garbage = st.one_of(
        st.binary(max_size=40), st.sampled_from([b"", b"null", b"[]", b'{"http": "x"}'])
    )
    return st.integers(0, 9).flatmap(
        lambda choice: document.map(lambda d: json.dumps(d).encode()) if choice < 8 else garbage
    )


@st.composite
def prefixes(draw: st.DrawFn, ports: range) -> dict[str, bytes]:
    entries: dict[str, bytes] = {}
    if draw(st.booleans()):
        entries["haproxy/domainName"] = draw(
            spoiled(st.sampled_from(["m.example.com", "manticore.test"]))
        ).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        entries["haproxy/mainPort"] = draw(
            spoiled(st.sampled_from(["8080", "80", str(ports.start)]))
        ).encode("utf-8", "surrogatepass")
    for i, value in enumerate(draw(st.lists(spoiled(valid_address), max_size=3))):
        entries[f"haproxy/webAppAddresses/{i}"] = value.encode("utf-8", "surrogatepass")
    ids = draw(
        st.lists(
            spoiled(st.from_regex(r"\A[a-z0-9-]{1,8}\Z")),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    for user in ids:
        entries[f"haproxy/data/{user}"] = draw(user_value(ports))
    return entries


def valid_routes(raw: bytes) -> UserRoutes | None:
    try:
        return UserRoutes.model_validate_json(raw)
    except ValidationError:
        return None


@pytest.fixture(scope="module")
def fuzz_config(tmp_path_factory: pytest.TempPathFactory) -> HAProxySettings:
    return make_settings(tmp_path_factory.mktemp("fuzz"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_prefixes_render_valid_configurations_routing_only_valid_users(
    fuzz_config: HAProxySettings, data: st.DataObject
) -> None:
    config = fuzz_config
    entries = data.draw(prefixes(config.tcp_port_range))
    kv = {
        key: KVEntry(key=key, value=value or None, create_index=i + 1, modify_index=i + 1)
        for i, (key, value) in enumerate(entries.items())
    }
    table, _ = RoutingReader(config).read(kv)
    applied = plan(
        None, table, SlotPolicy(http=4, tcp=4, web=2, tcp_max=len(config.tcp_port_range))
    ).target

    # Only values that pass the KV models are routed, each to its own address.
    for subdomain, target in table.http.items():
        key = f"haproxy/data/{target.user}"
        assert is_user_id(target.user)
        routes = valid_routes(entries[key])
        assert routes is not None
        assert any(r.subdomain == subdomain and r.address == target.address for r in routes.http)
    for port, target in table.tcp.items():
        routes = valid_routes(entries[f"haproxy/data/{target.user}"])
        assert routes is not None
        assert port in config.tcp_port_range
        assert any(r.port == port and r.address == target.address for r in routes.tcp)

    # The rendered files pass the real haproxy -c, and hold nothing but safe tokens.
    directory = config.config_dir
    files = render.Files(
        directory / "hosts.map",
        directory / "ports.map",
        directory / "404.html",
        directory / "rt.sock",
    )
    files.not_found_page.write_bytes(render.builtin_not_found_page())
    hosts_text = render.render_hosts_map(applied)
    ports_text = render.render_ports_map(applied)
    files.hosts_map.write_text(hosts_text)
    files.ports_map.write_text(ports_text)
    base = render.render_base(render.load_template(config), config, files.runtime_socket)
    text = render.render_config(applied, config, files, base)
    for line in hosts_text.splitlines()[1:] + ports_text.splitlines()[1:]:
        assert re.fullmatch(r"[a-z0-9.\-]+ (http|tcp)_\d{5}", line), line
    assert {line.split()[0] for line in hosts_text.splitlines()[1:]} == {
        table.host(s) for s in table.http
    }
    checked = HAProxyProcess(directory).validate(text)
    assert checked.ok, checked.message


def test_the_fuzzer_reaches_both_valid_and_hostile_users(tmp_path: Path) -> None:
    """The strategy is not vacuous: it produces routed users and refused values."""
    config = make_settings(tmp_path)
    strategy = prefixes(config.tcp_port_range)
    routed = refused = 0

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(strategy)
    def count(entries: dict[str, Any]) -> None:
        nonlocal routed, refused
        kv = {k: KVEntry(key=k, value=v or None, modify_index=1) for k, v in entries.items()}
        table, rejected = RoutingReader(config).read(kv)
        routed += len(table.http) + len(table.tcp)
        refused += len(rejected)

    count()
    # Fixed seed: these counts are the same on every run (30 routed, 202 refused when written).
    assert routed > 20
    assert refused > 100
