"""``make run`` works: the demo starts the devstack and two replicas and shows them working."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(120)
def test_make_run_walkthrough_completes(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.demo", "--once", "--ephemeral", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert 'GET examples/greetings/out/ada -> {"message":"hello, ada!"}' in out
    assert 'reconciler_invalid_input_total{controller="greeter",kind="malformed-json"} 1.0' in out
    assert "leadership=leader" in out
    assert "leadership=standby" in out
    assert "is passing" in out
    assert "exited with 0" in out
    assert 'GET examples/greetings/out/margaret -> {"message":"welcome, margaret!"}' in out
    assert "==> Done." in out
    # every child (devstack services and replicas) is gone
    leftover = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == ""
