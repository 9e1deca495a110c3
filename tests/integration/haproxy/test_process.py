"""The HAProxy process wrapper against the real binary: reloads judged by the process itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from controllers.haproxy.process import HAProxyProcess
from devstack.process import free_ports

pytestmark = [pytest.mark.integration]


def minimal_config(port: int, runtime_socket: Path, text: str) -> str:
    return f"""global
    stats socket {runtime_socket} mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend main
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "{text}"
"""


def test_a_reload_while_the_pid_file_is_being_rewritten_is_not_taken_for_a_dead_master(
    tmp_path: Path,
) -> None:
    """On reload the master unlinks and writes its pid file again while its CLI is down; a
    reload that polled the pid file then took a reload that went well for an exited master,
    put the previous file back under the new workers and never repaired them."""
    (port,) = free_ports(1)
    started = HAProxyProcess(tmp_path / "p")
    started.start(minimal_config(port, started.runtime_socket, "one"))
    try:
        master = started.master_pid()
        assert master is not None
        for i in range(8):
            # A wrapper attached to a running HAProxy (a restarted controller), and the pid
            # file gone at the moment the reload is asked: only the process tells if it lives.
            attached = HAProxyProcess(tmp_path / "p")
            attached.pid_file.unlink(missing_ok=True)
            status = attached.reload(minimal_config(port, attached.runtime_socket, f"r{i}"))
            assert status.master_pid == master
            assert status.reloads == i + 1
            assert status.failed_reloads == 0
            assert f'string "r{i}"' in attached.config_text()
    finally:
        HAProxyProcess(tmp_path / "p").stop()
