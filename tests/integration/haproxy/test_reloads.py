"""When HAProxy does reload: slots running out, a new domain or port, failures, restarts, drift.

Every reload here happens under load (a client repeating requests, an open TCP session and an
open websocket) and must drop nothing; a reload that fails must leave the old configuration
serving, users still coming and going within it.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import anyio
import pytest

from controllers.haproxy.controller import HAProxyRouter
from controllers.haproxy.process import HAProxyProcess, pid_alive
from controllers.haproxy.runtime import RuntimeAPI
from controllers.settings import HAProxySettings
from tests.integration.helpers import eventually, running

from .backends import OpenWebSocket, containers
from .conftest import DOMAIN, host, make_settings, user_routes
from .test_routing import Hammer, core_of, first_line, metric, put_basics, until

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]


def reload_count(reason: str) -> float:
    return metric("manticore_haproxy_reloads_total", reason=reason)


async def test_running_out_of_slots_and_a_new_domain_reload_without_dropping_anyone(
    consul_server, haproxy_settings: HAProxySettings
) -> None:
    settings = haproxy_settings  # 8 HTTP slots: the 4th user (8 routes) crosses 90%
    ports = settings.tcp_port_range
    router = HAProxyRouter(config=settings)
    users = [f"u{i}" for i in range(6)]
    with containers("webapp", *users) as c:
        async with running([router.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/u0", user_routes(c["u0"], ports[0]))
            await until("hmi u0", first_line, settings, host("u0"), timeout=20)
            hammer = await anyio.to_thread.run_sync(
                lambda: Hammer(settings, host("u0"), ports[0]).start()
            )
            ws = await anyio.to_thread.run_sync(OpenWebSocket, settings.main_port, host("u0"))
            slots_before = reload_count("slots")
            try:
                for i, user in enumerate(users[1:], start=1):
                    await kv.kv_put(f"haproxy/data/{user}", user_routes(c[user], ports[i]))
                for user in users:
                    await until(f"hmi {user}", first_line, settings, host(user), timeout=20)
                    await until(f"broker {user}", first_line, settings, host(user, "broker"))
                await eventually(lambda: reload_count("slots") > slots_before, timeout=10)
                assert router.applied is not None
                assert router.applied.shape.http_slots >= 16

                shape_before = reload_count("shape")
                await kv.kv_put("haproxy/domainName", b"other.test")
                new_host = f"{host('u3').removesuffix(DOMAIN)}other.test"
                await until("hmi u3", first_line, settings, new_host, timeout=20)
                assert await first_line(settings, host("u3")) == "status 404"
                await eventually(lambda: reload_count("shape") == shape_before + 1, timeout=10)
                hammer.hmi_host = f"{host('u0').removesuffix(DOMAIN)}other.test"
                await anyio.sleep(0.5)
                assert hammer.session is not None
                # Both sessions opened before the reloads still work (an old worker keeps them).
                assert await anyio.to_thread.run_sync(hammer.session.echo, "after") == "after"
                assert await anyio.to_thread.run_sync(ws.echo, "after") == "after"
            finally:
                await anyio.to_thread.run_sync(hammer.finish)
                ws.close()
            # Requests in flight while the domain changed may see the new configuration's 404
            # for the old name: that is a routing answer, not a dropped connection.
            dropped = [f for f in hammer.failures if not f.startswith("404 ")]
            assert dropped == []
            assert hammer.ok > 20
            assert await anyio.to_thread.run_sync(router.applier.verify, router.applied) == []


async def test_a_reload_the_master_rejects_keeps_the_old_one_and_users_still_come_and_go(
    consul_server, haproxy_settings: HAProxySettings
) -> None:
    settings = haproxy_settings
    ports = settings.tcp_port_range
    router = HAProxyRouter(config=settings)
    with containers("webapp", "alice", "bob") as c:
        async with running([router.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            failures = metric("manticore_haproxy_reload_failures_total", kind="rejected")
            # haproxy -c does not bind: a port someone else holds passes validation and only
            # fails in the master.
            with socket.socket() as squatter:
                squatter.bind(("127.0.0.1", 0))
                squatter.listen()
                taken = squatter.getsockname()[1]
                await kv.kv_put("haproxy/mainPort", str(taken).encode())
                await eventually(
                    lambda: (
                        metric("manticore_haproxy_reload_failures_total", kind="rejected")
                        > failures
                    ),
                    timeout=20,
                )
                assert metric("manticore_haproxy_config_valid") == 0
                assert await first_line(settings, host("alice")) == "hmi alice"
                # Users keep arriving through the old configuration while it is held.
                await kv.kv_put("haproxy/data/bob", user_routes(c["bob"], ports[1]))
                await until("hmi bob", first_line, settings, host("bob"), timeout=10)
                assert await core_of(ports[1]) == "core bob"
                config = await anyio.Path(settings.config_dir / "haproxy.cfg").read_text()
                assert f":{taken}" not in config
            # The port is free again: the held reload is retried and takes.
            moved = settings.model_copy(update={"main_port": taken})
            await until("hmi bob", first_line, moved, host("bob"), timeout=30)
            await eventually(lambda: metric("manticore_haproxy_config_valid") == 1, timeout=10)
            await eventually(
                lambda: router.applied is not None and router.applied.shape.main_port == taken
            )
            assert await anyio.to_thread.run_sync(router.applier.verify, router.applied) == []


async def test_a_rejected_reload_retried_with_the_very_same_files_takes(
    consul_server, haproxy_settings: HAProxySettings
) -> None:
    """A rejected reload removes the map files it wrote; the retry, with nothing else changed,
    renders the same bytes and must write them again (it once skipped them as already written
    and failed validation forever on the missing files)."""
    settings = haproxy_settings
    ports = settings.tcp_port_range
    router = HAProxyRouter(config=settings)
    with containers("webapp", "alice") as c:
        async with running([router.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            rejected = metric("manticore_haproxy_reload_failures_total", kind="rejected")
            invalid = metric("manticore_haproxy_reload_failures_total", kind="invalid")
            with socket.socket() as squatter:
                squatter.bind(("127.0.0.1", 0))
                squatter.listen()
                taken = squatter.getsockname()[1]
                await kv.kv_put("haproxy/mainPort", str(taken).encode())
                await eventually(
                    lambda: (
                        metric("manticore_haproxy_reload_failures_total", kind="rejected")
                        > rejected
                    ),
                    timeout=20,
                )
            moved = settings.model_copy(update={"main_port": taken})
            await until("hmi alice", first_line, moved, host("alice"), timeout=30)
            await eventually(
                lambda: router.applied is not None and router.applied.shape.main_port == taken
            )
            assert metric("manticore_haproxy_reload_failures_total", kind="invalid") == invalid
            assert router.applied is not None
            assert await anyio.to_thread.run_sync(router.applier.verify, router.applied) == []


async def test_a_restarted_controller_adopts_the_running_haproxy_without_reloading(
    consul_server, haproxy_settings: HAProxySettings
) -> None:
    settings = haproxy_settings
    ports = settings.tcp_port_range
    with containers("webapp", "alice", "bob") as c:
        first = HAProxyRouter(config=settings)
        async with running([first.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
        master = HAProxyProcess(settings.config_dir).master_pid()
        assert master is not None
        # The controller is gone; HAProxy is not, and serves on.
        assert await first_line(settings, host("alice")) == "hmi alice"
        starts = reload_count("start")
        second = HAProxyRouter(config=settings)
        async with running([second.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await eventually(lambda: second.applied is not None, timeout=20)
            await kv.kv_put("haproxy/data/bob", user_routes(c["bob"], ports[1]))
            await until("hmi bob", first_line, settings, host("bob"), timeout=20)
        assert reload_count("start") == starts
        assert HAProxyProcess(settings.config_dir).master_pid() == master


async def test_a_killed_haproxy_is_started_again_with_every_route(
    consul_server, haproxy_settings: HAProxySettings
) -> None:
    settings = haproxy_settings
    ports = settings.tcp_port_range
    router = HAProxyRouter(config=settings)
    with containers("webapp", "alice") as c:
        async with running([router.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            process = HAProxyProcess(settings.config_dir)
            state = process.status()
            assert state.master_pid is not None
            for pid in (state.master_pid, *state.workers):
                os.kill(pid, signal.SIGKILL)
            await eventually(lambda: not pid_alive(state.master_pid or 0), timeout=10)
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            assert await core_of(ports[0]) == "core alice"
            assert process.master_pid() not in (None, state.master_pid)


async def test_drift_in_the_running_haproxy_is_found_and_repaired(
    consul_server, tmp_path: Path, haproxy_dirs: list[Path]
) -> None:
    settings = make_settings(tmp_path / "drift", MANTICORE_HAPROXY_VERIFY_INTERVAL="0.5")
    haproxy_dirs.append(settings.config_dir)
    ports = settings.tcp_port_range
    router = HAProxyRouter(config=settings)
    with containers("webapp", "alice") as c:
        async with running([router.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            repairs = reload_count("repair")
            assert router.applied is not None
            hosts_map = router.applier.map_paths(router.applied.generation)["hosts"]
            # Someone deletes a route behind the controller's back.
            runtime = RuntimeAPI(HAProxyProcess(settings.config_dir).runtime_socket)
            await anyio.to_thread.run_sync(
                runtime.execute, [f"del map {hosts_map} {host('alice')}"]
            )
            assert await first_line(settings, host("alice")) == "status 404"
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            # The new worker answers a moment before the reload is counted.
            await eventually(lambda: reload_count("repair") == repairs + 1, timeout=10)
            assert metric("manticore_haproxy_drift_total") >= 1


def routed(router: HAProxyRouter, user: str) -> bool:
    return router.applied is not None and user in router.applied.routing.users()


async def test_reload_mode_reloads_on_every_change_like_consul_template(
    consul_server, tmp_path: Path, haproxy_dirs: list[Path]
) -> None:
    settings = make_settings(
        tmp_path / "reload-mode",
        MANTICORE_HAPROXY_UPDATE_MODE="reload",
        MANTICORE_HAPROXY_SAFETY_RELOAD_INTERVAL="0",
    )
    haproxy_dirs.append(settings.config_dir)
    ports = settings.tcp_port_range
    router = HAProxyRouter(config=settings)
    with containers("webapp", "alice", "bob") as c:
        async with running([router.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            # The new workers answer before the controller hears the master confirm the reload
            # and counts it; once the router holds the state, that reload is counted.
            await eventually(lambda: routed(router, "alice"), timeout=10)
            changes = reload_count("change")
            updates = metric("manticore_haproxy_runtime_updates_total", op="map-add")
            await kv.kv_put("haproxy/data/bob", user_routes(c["bob"], ports[1]))
            await until("hmi bob", first_line, settings, host("bob"), timeout=20)
            await kv.kv_delete("haproxy/data/alice")
            await until("status 404", first_line, settings, host("alice"), timeout=20)
            await eventually(lambda: not routed(router, "alice"), timeout=10)
            assert reload_count("change") == changes + 2
            assert metric("manticore_haproxy_runtime_updates_total", op="map-add") == updates


async def test_the_safety_net_reloads_everything_periodically(
    consul_server, tmp_path: Path, haproxy_dirs: list[Path]
) -> None:
    settings = make_settings(tmp_path / "periodic", MANTICORE_HAPROXY_SAFETY_RELOAD_INTERVAL="1")
    haproxy_dirs.append(settings.config_dir)
    router = HAProxyRouter(config=settings)
    with containers("webapp", "alice") as c:
        async with running([router.declaration(tick=0.2)], consul_server.address) as (_, kv):
            await put_basics(kv, settings, c["webapp"].hmi)
            await kv.kv_put("haproxy/data/alice", user_routes(c["alice"]))
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            periodic = reload_count("periodic")
            await eventually(lambda: reload_count("periodic") >= periodic + 2, timeout=20)
            assert await first_line(settings, host("alice")) == "hmi alice"
