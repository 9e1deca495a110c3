"""The controller's own logic: consul-template's wait, change detection, checks at start."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from controllers.haproxy.controller import Debounce, HAProxyRouter, _fingerprint, build_controller
from controllers.settings import Settings
from reconciler.clients.consul import KVEntry
from reconciler.clients.errors import ConfigError


def test_debounce_waits_for_quiet_but_never_longer_than_max() -> None:
    wait = Debounce(min=0.1, max=0.5)
    assert wait.remaining(0.0) == 0.0  # nothing observed: nothing to wait for
    wait.changed(10.0)
    assert wait.remaining(10.0) == pytest.approx(0.1)
    # Changes keep coming every 60 ms: each pushes the quiet point, the cap holds.
    for step in range(1, 20):
        wait.changed(10.0 + step * 0.06)
    assert wait.remaining(11.14) == 0.0
    assert wait.remaining(10.45) == pytest.approx(0.05)
    wait.settled()
    assert wait.remaining(11.2) == 0.0
    wait.changed(20.0)
    assert wait.remaining(20.05) == pytest.approx(0.05)


def test_any_write_addition_or_removal_changes_the_fingerprint() -> None:
    a = KVEntry(key="haproxy/data/a", value=b"{}", modify_index=5)
    b = KVEntry(key="haproxy/data/b", value=b"{}", modify_index=7)
    base = _fingerprint({a.key: a, b.key: b})
    rewritten = KVEntry(key=a.key, value=b"{}", modify_index=9)
    assert _fingerprint({a.key: rewritten, b.key: b}) != base
    assert _fingerprint({a.key: a}) != base
    assert _fingerprint({}) == (0, 0, 0)


def test_bad_settings_stop_the_controller_at_start(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    bad_dir = Settings.from_env({"MANTICORE_HAPROXY_CONFIG_DIR": str(blocked / "sub")}).haproxy
    with pytest.raises(ConfigError, match="MANTICORE_HAPROXY_CONFIG_DIR"):
        anyio.run(HAProxyRouter(config=bad_dir).startup, None)
    spaced = Settings.from_env({"MANTICORE_HAPROXY_CONFIG_DIR": str(tmp_path / "a b")}).haproxy
    with pytest.raises(ConfigError, match="absolute path"):
        anyio.run(HAProxyRouter(config=spaced).startup, None)
    template = tmp_path / "base.cfg"
    template.write_text("global\n    maxconn $maxconn\n")
    no_socket = Settings.from_env(
        {
            "MANTICORE_HAPROXY_CONFIG_DIR": str(tmp_path / "ok"),
            "MANTICORE_HAPROXY_TEMPLATE": str(template),
        }
    ).haproxy
    with pytest.raises(ConfigError, match="stats socket"):
        anyio.run(HAProxyRouter(config=no_socket).startup, None)


def test_the_declaration_is_read_only_and_not_leader_elected() -> None:
    declared = build_controller(Settings.from_env({}).haproxy)
    assert declared.needs_leadership is False
    assert declared.status is False
    assert declared.workers == 1
    assert "haproxy-user-routes" in declared.models


def test_settings_refuse_a_stats_port_in_the_tcp_range_and_an_inverted_wait() -> None:
    with pytest.raises(ConfigError, match="STATS_PORT"):
        Settings.from_env({"MANTICORE_HAPROXY_STATS_PORT": "20001"})
    with pytest.raises(ConfigError, match="WAIT_MAX"):
        Settings.from_env({"MANTICORE_HAPROXY_WAIT_MIN": "2", "MANTICORE_HAPROXY_WAIT_MAX": "1"})
