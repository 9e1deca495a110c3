"""``python -m devstack.nomad``: one ready line, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devstack.nomad.testing import requires_embedded_nomad

from .helpers import python_task, raw_exec_job, register, wait_for

pytestmark = [pytest.mark.integration, requires_embedded_nomad]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_foreground_server_kills_tasks_on_sigterm(tmp_path: Path) -> None:
    port = _port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.nomad",
            "--port",
            str(port),
            "--nodes",
            "2",
            "--node-meta",
            "rack=r1",
            "--docker-start-delay",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"nomad ready on http://127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            nodes = http.get("/v1/nodes").json()
            assert len(nodes) == 2
            assert http.get(f"/v1/node/{nodes[0]['ID']}").json()["Meta"] == {"rack": "r1"}
            pid_file = tmp_path / "pid"
            code = (
                f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                "time.sleep(120)"
            )
            register(http, raw_exec_job("sleeper", [python_task("sleep", code)]))
            pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "nomad stopped" in proc.stdout.read()

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_bad_node_meta_is_rejected() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.nomad", "--node-meta", "novalue"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "KEY=VALUE" in result.stdout
