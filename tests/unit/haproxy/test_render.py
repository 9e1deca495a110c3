"""Rendering: the template is checked, durations and paths are HAProxy-safe, nothing injects."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.haproxy import render
from controllers.haproxy.applier import SavedState, StateDocument
from controllers.haproxy.plan import SlotPolicy, plan
from controllers.haproxy.routes import Routing, Target
from controllers.settings import Settings
from reconciler.clients.errors import ConfigError

from .test_plan import POLICY, routings


def config(tmp_path: Path, **env: str):  # type: ignore[no-untyped-def]
    return Settings.from_env({"MANTICORE_HAPROXY_CONFIG_DIR": str(tmp_path), **env}).haproxy


def test_durations_are_in_haproxy_units() -> None:
    assert render.duration(5) == "5s"
    assert render.duration(0.25) == "250ms"
    assert render.duration(3600) == "3600s"
    assert render.duration(1.5) == "1500ms"


def test_the_builtin_template_renders_every_setting(tmp_path: Path) -> None:
    settings = config(
        tmp_path, MANTICORE_HAPROXY_TIMEOUT_TUNNEL="7200", MANTICORE_HAPROXY_MAXCONN="123"
    )
    text = render.render_base(render.load_template(settings), settings, tmp_path / "rt.sock")
    assert f"stats socket {tmp_path}/rt.sock mode 600 level admin expose-fd listeners" in text
    assert "timeout tunnel 7200s" in text
    assert "maxconn 123" in text
    assert "hard-stop-after 3600s" in text
    assert "$" not in text


def test_a_user_template_needs_known_placeholders_and_the_runtime_socket(tmp_path: Path) -> None:
    custom = tmp_path / "base.cfg"
    custom.write_text("global\n    stats socket $runtime_socket level admin expose-fd listeners\n")
    assert render.load_template(config(tmp_path, MANTICORE_HAPROXY_TEMPLATE=str(custom)))
    custom.write_text(
        "global\n    stats socket $runtime_socket level admin expose-fd listeners\n    x $nope\n"
    )
    with pytest.raises(ConfigError, match="unknown placeholders"):
        render.load_template(config(tmp_path, MANTICORE_HAPROXY_TEMPLATE=str(custom)))
    custom.write_text("global\n    maxconn $maxconn\n")
    with pytest.raises(ConfigError, match="stats socket"):
        render.load_template(config(tmp_path, MANTICORE_HAPROXY_TEMPLATE=str(custom)))
    with pytest.raises(ConfigError, match="MANTICORE_HAPROXY_TEMPLATE"):
        render.load_template(config(tmp_path, MANTICORE_HAPROXY_TEMPLATE=str(tmp_path / "missing")))


def test_paths_that_could_break_the_configuration_are_refused() -> None:
    assert (
        render.safe_path(Path("/var/lib/manticore/haproxy"), "dir") == "/var/lib/manticore/haproxy"
    )
    for bad in ("/tmp/a b", "/tmp/a\nb", '/tmp/a"b', "/tmp/#x", "relative/x", "/tmp/$x"):
        with pytest.raises(ConfigError):
            render.safe_path(Path(bad), "dir")


def test_the_last_line_of_defence_refuses_unsafe_values(tmp_path: Path) -> None:
    settings = config(tmp_path)
    # Routes are validated long before; a value that slipped through still cannot be written.
    table = Routing("m.test", 8080, http={"a" * 16: Target("u", "hmi", "10.0.0.1:80\n  bind :1")})
    applied = plan(None, table, SlotPolicy(http=2, tcp=2, web=1, tcp_max=10)).target
    files = render.Files(
        tmp_path / "h.map", tmp_path / "p.map", tmp_path / "404.html", tmp_path / "rt"
    )
    with pytest.raises(ValueError, match="refusing to render"):
        render.render_config(applied, settings, files, "global\n")
    with pytest.raises(ValueError, match="refusing to render"):
        render.render_map({"a b": "c"}, "test")


def test_maps_are_sorted_key_value_lines(tmp_path: Path) -> None:
    table = Routing(
        "m.test",
        8080,
        http={
            "b" * 16: Target("u", "hmi", "10.0.0.1:80"),
            "a" * 16: Target("v", "hmi", "10.0.0.2:80"),
        },
        tcp={20001: Target("u", "core", "10.0.0.1:81")},
    )
    applied = plan(None, table, SlotPolicy(http=2, tcp=2, web=1, tcp_max=10)).target
    hosts = render.render_hosts_map(applied).splitlines()
    assert hosts[0].startswith("#")
    assert hosts[1:] == [f"{'a' * 16}.m.test http_00000", f"{'b' * 16}.m.test http_00001"]
    assert render.render_ports_map(applied).splitlines()[1:] == ["20001 tcp_00000"]


@settings(max_examples=60, deadline=None)
@given(st.lists(routings(), min_size=2, max_size=6))
def test_a_document_updated_in_place_equals_a_fresh_render(tables: list[Routing]) -> None:
    config = Settings.from_env({"MANTICORE_HAPROXY_CONFIG_DIR": "/tmp/doc"}).haproxy
    files = render.Files(Path("/tmp/h.map"), Path("/tmp/p.map"), Path("/tmp/404"), Path("/tmp/rt"))
    current = plan(None, tables[0], POLICY).target
    doc = render.ConfigDocument(current, config, files, "global\n")
    for table in tables[1:]:
        step = plan(current, table, POLICY)
        current = step.target
        if step.reload is not None:
            doc = render.ConfigDocument(current, config, files, "global\n")
        else:
            doc.update(current)
        assert doc.text() == render.render_config(current, config, files, "global\n")


@settings(max_examples=60, deadline=None)
@given(st.lists(routings(), min_size=2, max_size=6))
def test_maps_and_state_kept_across_changes_equal_fresh_ones(tables: list[Routing]) -> None:
    """The applier's incremental map files and state.json: after any sequence of changes, runtime
    or reload, byte for byte what a fresh render and dump produce."""
    hosts = render.MapDocument(render.HOSTS_MAP_TITLE)
    ports = render.MapDocument(render.PORTS_MAP_TITLE)
    state = StateDocument()
    current = None
    for table in tables:
        current = plan(current, table, POLICY).target
        for _ in range(2):  # a second call with nothing changed returns the same text
            assert hosts.text(current.hosts_map()) == render.render_hosts_map(current)
            assert ports.text(current.ports_map()) == render.render_ports_map(current)
            assert state.text(current) == SavedState.dump(current)


def test_a_map_document_refuses_an_unsafe_entry_and_recovers() -> None:
    doc = render.MapDocument("test")
    assert doc.text({"a.test": "http_00000"}).splitlines()[1:] == ["a.test http_00000"]
    with pytest.raises(ValueError, match="refusing"):
        doc.text({"a.test": "http_00000", "b test": "http_00001"})
    assert doc.text({"a.test": "http_00001"}).splitlines()[1:] == ["a.test http_00001"]


@settings(max_examples=60, deadline=None)
@given(routings())
def test_state_json_round_trips(table: Routing) -> None:
    applied = plan(None, table, POLICY).target
    assert SavedState.model_validate_json(SavedState.dump(applied)).applied() == applied
