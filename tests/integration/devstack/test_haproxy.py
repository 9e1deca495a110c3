"""The real HAProxy through :class:`devstack.haproxy.HAProxy`: routing, checks, reloads, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.haproxy import ConfigInvalid, HAProxy, ReloadFailed
from devstack.process import free_ports, http_get, http_ok, pid_alive, wait_until

from .conftest import Backend

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("needs_haproxy")]


def routing_config(proxy: HAProxy, http_backend: Backend, tcp_port: int, echo: Backend) -> str:
    """What the renderer will produce: the base sections, the mainPort and one user TCP port."""
    return proxy.base_config() + "\n".join(
        [
            "frontend main",
            f"    bind 127.0.0.1:{proxy.port}",
            "    default_backend web",
            "",
            "backend web",
            f"    server s1 127.0.0.1:{http_backend.port}",
            "",
            "frontend user_tcp",
            "    mode tcp",
            f"    bind 127.0.0.1:{tcp_port}",
            "    default_backend core",
            "",
            "backend core",
            "    mode tcp",
            f"    server core1 127.0.0.1:{echo.port}",
            "",
        ]
    )


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[HAProxy]:
    port, stats_port = free_ports(2)
    haproxy = HAProxy(tmp_path / "haproxy", port=port, stats_port=stats_port)
    try:
        yield haproxy
    finally:
        haproxy.stop()


@pytest.fixture
def tcp_port() -> int:
    return free_ports(1)[0]


def get_body(url: str) -> tuple[int, str]:
    status, body = http_get(url, timeout=5.0)
    return status, body.decode()


def tcp_roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as conn:
        conn.sendall(payload + b"\n")
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bootstrap_config_serves_503_stats_and_health(proxy: HAProxy) -> None:
    proxy.start()

    assert get_body(proxy.url) == (503, "no route\n")
    assert http_get(proxy.health_url)[0] == 200
    status, body = http_get(proxy.stats_url)
    assert status == 200
    assert b"Statistics Report" in body
    state = proxy.status()
    assert state.running
    assert state.master_pid is not None
    assert pid_alive(state.master_pid)
    assert len(state.workers) == 1
    assert "bind 127.0.0.1:" in proxy.config_text()
    assert "0.0.0.0" not in proxy.config_text()


def test_routes_http_and_tcp_traffic(
    proxy: HAProxy, http_backend_a: Backend, tcp_echo_backend: Backend, tcp_port: int
) -> None:
    proxy.start(routing_config(proxy, http_backend_a, tcp_port, tcp_echo_backend))

    assert get_body(proxy.url) == (200, "backend-a")
    assert tcp_roundtrip(tcp_port, b"hello core") == b"echo:hello core\n"
    # The runtime API answers on the worker socket: the renderer can use it instead of reloads.
    stats = proxy.runtime_command("show stat").splitlines()
    assert any(line.startswith("web,s1,") for line in stats)


def test_validate_reports_ok_and_the_reason_of_a_failure(proxy: HAProxy) -> None:
    ok, message = proxy.validate(proxy.bootstrap_config())
    assert ok
    assert "valid" in message

    ok, message = proxy.validate(
        proxy.bootstrap_config() + "\nbackend broken\n    bogus_keyword 1\n"
    )
    assert not ok
    assert "unknown keyword 'bogus_keyword'" in message
    # The message names the line, not a temporary file that no longer exists.
    assert "<candidate>:" in message
    assert str(proxy.config_dir) not in message


def test_start_refuses_an_invalid_config_and_runs_nothing(proxy: HAProxy) -> None:
    with pytest.raises(ConfigInvalid, match="unknown keyword"):
        proxy.start("global\n    not_a_directive on\n")

    assert proxy.master_pid() is None
    assert proxy.status().running is False


def test_invalid_reload_leaves_the_running_config_untouched(
    proxy: HAProxy, http_backend_a: Backend, tcp_echo_backend: Backend, tcp_port: int
) -> None:
    good = routing_config(proxy, http_backend_a, tcp_port, tcp_echo_backend)
    proxy.start(good)
    before = proxy.status()

    with pytest.raises(ConfigInvalid) as caught:
        proxy.reload(good + "\nfrontend extra\n    bind 127.0.0.1:1\n    no_such_thing\n")

    assert "unknown keyword 'no_such_thing'" in caught.value.message
    assert proxy.config_text() == good
    after = proxy.status()
    assert after.master_pid == before.master_pid
    assert after.workers == before.workers
    assert after.reloads == before.reloads
    assert get_body(proxy.url) == (200, "backend-a")


def test_a_reload_the_master_rejects_restores_the_previous_file(
    proxy: HAProxy, http_backend_a: Backend, tcp_echo_backend: Backend, tcp_port: int
) -> None:
    good = routing_config(proxy, http_backend_a, tcp_port, tcp_echo_backend)
    proxy.start(good)
    before = proxy.status()
    # `haproxy -c` does not bind, so a port taken by someone else passes validation and only
    # fails in the master.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        clash = good + f"\nfrontend clash\n    bind 127.0.0.1:{taken}\n    default_backend web\n"
        assert proxy.validate(clash).ok

        with pytest.raises(ReloadFailed, match="Address already in use"):
            proxy.reload(clash)

    assert proxy.config_text() == good
    after = proxy.status()
    assert after.failed_reloads == before.failed_reloads + 1
    assert after.workers == before.workers
    assert get_body(proxy.url) == (200, "backend-a")
    # The master is not stuck: the next good reload goes through.
    assert proxy.reload(good).reloads > after.reloads


def test_hitless_reload_keeps_serving(
    proxy: HAProxy,
    http_backend_a: Backend,
    http_backend_b: Backend,
    tcp_echo_backend: Backend,
    tcp_port: int,
) -> None:
    to_a = routing_config(proxy, http_backend_a, tcp_port, tcp_echo_backend)
    to_b = routing_config(proxy, http_backend_b, tcp_port, tcp_echo_backend)
    proxy.start(to_a)
    first_worker = proxy.status().workers
    stop = threading.Event()
    answers: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def hammer() -> None:
        while not stop.is_set():
            try:
                answers.append(get_body(proxy.url))
            except OSError as exc:  # a refused or reset connection is a dropped request
                errors.append(exc)

    client = threading.Thread(target=hammer, daemon=True)
    client.start()
    try:
        for cfg in (to_b, to_a, to_b):
            seen = len(answers)
            state = proxy.reload(cfg)
            assert state.workers
            assert set(state.workers).isdisjoint(first_worker)
            assert wait_until(lambda n=seen: len(answers) > n + 5, 10)
    finally:
        stop.set()
        client.join(10)

    assert errors == []
    assert {status for status, _ in answers} == {200}
    assert {body for _, body in answers} == {"backend-a", "backend-b"}
    assert get_body(proxy.url) == (200, "backend-b")
    assert proxy.status().reloads == 3
    # Old workers have no connection left to finish and leave.
    assert wait_until(lambda: not proxy.status().old_workers, 10)
    assert not any(pid_alive(pid) for pid in first_worker)


def test_attach_drives_a_proxy_started_elsewhere(
    proxy: HAProxy, http_backend_a: Backend, tcp_echo_backend: Backend, tcp_port: int
) -> None:
    proxy.start()
    other = HAProxy.attach(proxy.config_dir, port=proxy.port, stats_port=proxy.stats_port)

    assert other.status().master_pid == proxy.status().master_pid
    other.reload(routing_config(other, http_backend_a, tcp_port, tcp_echo_backend))

    assert get_body(proxy.url) == (200, "backend-a")
    assert proxy.status().reloads == 1


def test_stop_leaves_no_process_and_no_socket(proxy: HAProxy) -> None:
    proxy.start()
    state = proxy.status()
    pids = [state.master_pid, *state.workers]

    proxy.stop()

    assert not any(pid_alive(pid) for pid in pids if pid is not None)
    assert proxy.status().running is False
    assert not proxy.master_socket.exists()
    assert not proxy.pid_file.exists()
    with pytest.raises(OSError):
        http_get(proxy.health_url, timeout=1.0)
    proxy.stop()  # idempotent


def test_attach_without_a_running_proxy_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no running HAProxy"):
        HAProxy.attach(tmp_path / "nothing-here")


def test_devstack_haproxy_command_serves_reloads_on_sighup_and_stops(
    tmp_path: Path, http_backend_a: Backend, tcp_echo_backend: Backend, tcp_port: int
) -> None:
    config_dir = tmp_path / "cli"
    source = tmp_path / "routes.cfg"
    port, stats_port = free_ports(2)
    template = HAProxy(config_dir, port=port, stats_port=stats_port)
    source.write_text(template.bootstrap_config())
    argv = [sys.executable, "-m", "devstack", "haproxy", "--port", str(port)]
    argv += ["--stats-port", str(stats_port), "--config-dir", str(config_dir)]
    argv += ["--config", str(source)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(line.rstrip() for line in proc.stdout or ()), daemon=True
    )
    reader.start()
    master: int | None = None
    try:
        assert wait_until(lambda: bool(lines), 15), "no ready line"
        assert lines[0].startswith(f"haproxy ready on http://127.0.0.1:{port}")
        assert http_ok(template.health_url)
        master = HAProxy.attach(config_dir).status().master_pid
        assert get_body(template.url) == (503, "no route\n")

        source.write_text(routing_config(template, http_backend_a, tcp_port, tcp_echo_backend))
        proc.send_signal(signal.SIGHUP)

        assert wait_until(lambda: get_body(template.url) == (200, "backend-a"), 10), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        reader.join(5)
        assert any(line.startswith("haproxy reloaded") for line in lines)
        assert lines[-1] == "haproxy stopped"
        assert master is not None
        assert not pid_alive(master)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if master is not None and pid_alive(master):
            os.kill(master, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
