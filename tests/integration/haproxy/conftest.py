"""A real HAProxy driven by the haproxy controller: settings on free ports, cleanup, KV helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.haproxy.process import HAProxyProcess, haproxy_binary
from controllers.settings import HAProxySettings, Settings
from devstack.process import free_port_range, free_ports

from .backends import UserContainers

DOMAIN = "manticore.test"


@pytest.fixture(autouse=True)
def _needs_haproxy() -> None:
    if haproxy_binary() is None:
        pytest.skip("the haproxy binary is not installed (make haproxy)")


def make_settings(config_dir: Path, **overrides: str) -> HAProxySettings:
    """The controller's settings for one test: every port free, everything on 127.0.0.1."""
    return Settings.from_env(haproxy_env(config_dir, **overrides)).haproxy


def haproxy_env(config_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of :func:`make_settings` (the other controllers read it too)."""
    main_port, stats_port = free_ports(2)
    tcp = free_port_range(16)
    env = {
        "DOMAIN_NAME": DOMAIN,
        "HAPROXY_HTTP_LISTEN": str(main_port),
        "TCP_PORT_RANGE_START": str(tcp.start),
        "TCP_PORT_RANGE_END": str(tcp.stop - 1),
        "MANTICORE_HAPROXY_CONFIG_DIR": str(config_dir),
        "MANTICORE_HAPROXY_STATS_PORT": str(stats_port),
        "MANTICORE_HAPROXY_BIND_ADDRESS": "127.0.0.1",
        "MANTICORE_HAPROXY_WAIT_MIN": "0.05",
        "MANTICORE_HAPROXY_WAIT_MAX": "0.2",
        "MANTICORE_HAPROXY_HTTP_SLOTS": "8",
        "MANTICORE_HAPROXY_TCP_SLOTS": "8",
        "MANTICORE_HAPROXY_WEB_APP_SLOTS": "2",
        "MANTICORE_HAPROXY_HARD_STOP_AFTER": "30",
        **overrides,
    }
    return env


@pytest.fixture
def haproxy_dirs(tmp_path: Path) -> Iterator[list[Path]]:
    """Config directories of the HAProxies a test starts; each is stopped afterwards."""
    dirs: list[Path] = []
    try:
        yield dirs
    finally:
        for directory in dirs:
            HAProxyProcess(directory).stop()


@pytest.fixture
def haproxy_settings(tmp_path: Path, haproxy_dirs: list[Path]) -> HAProxySettings:
    config_dir = tmp_path / "haproxy"
    haproxy_dirs.append(config_dir)
    return make_settings(config_dir)


def subdomain(user: str, role: str = "hmi") -> str:
    """A valid, distinct 16+ character subdomain for a user's role."""
    base = "".join(c for c in f"{role}{user}".lower() if c.isalnum())
    return (base + "x" * 16)[: max(16, len(base))]


def user_routes(user: UserContainers, port: int | None = None, *, broker: bool = True) -> bytes:
    """``haproxy/data/<user>`` as haproxy-kv writes it: HMI (and broker) by subdomain, core by
    TCP ``port``."""
    http = [{"subdomain": subdomain(user.user), "address": user.hmi, "role": "hmi"}]
    if broker:
        http.append(
            {"subdomain": subdomain(user.user, "broker"), "address": user.broker, "role": "broker"}
        )
    value: dict[str, Any] = {"http": http, "tcp": []}
    if port is not None:
        value["tcp"].append({"port": port, "address": user.core, "role": "core"})
    return json.dumps(value).encode()


def host(user: str, role: str = "hmi") -> str:
    return f"{subdomain(user, role)}.{DOMAIN}"
