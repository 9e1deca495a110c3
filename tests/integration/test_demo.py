"""``make run`` works: the demo shows Manticore from arrival to departure, and cleans up."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(420)
def test_make_run_walkthrough_completes(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.demo", "--once", "--ephemeral", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # two users claimed, two waiting (MAX_USERS=2), in the order they asked
    assert '"ada": {"claimed": true, "queue": 1' in out
    assert '"dee": {"claimed": false, "queue": 4' in out
    # every stage of a claimed user appears, and HAProxy really routes to its own fakes
    for user in ("ada", "bob", "cy"):
        assert f"Nomad job core-hmi-{user}: running" in out
        assert f"Consul service core-hmi-{user}-core: passing" in out
        assert f"manticore/allocations/data/{user} = " in out
        assert f"haproxy/data/{user} = " in out
        assert f"manticore/elb/data/{user} = " in out
        assert f"-> 'hmi {user}\\ncore: core {user}'" in out
        assert f"-> 'core {user}'" in out
    assert "reconciler/status/waitlist/mallory = Invalid" in out
    assert 'reconciler_invalid_input_total{controller="waitlist",kind="malformed-json"} 1.0' in out
    assert "ada: no waiting entry, job, service, allocation, routes, listener or status left" in out
    assert "claimed now: ['bob', 'cy']; waiting: ['dee']" in out
    assert "'leader'" in out
    assert "'standby'" in out
    assert "exited with 0" in out
    assert "claimed now: ['cy', 'dee']" in out
    # everyone left: nothing remains
    assert "manticore/waiting/data = {}" in out
    assert "keys under haproxy/data/: []" in out
    assert "Nomad jobs core-hmi-*: []" in out
    assert "ELB TCP listeners: []" in out
    # the front door: users through HAProxy and the intake API, two fit, one waits
    assert "haproxy/webAppAddresses = ['127.0.0.1:" in out
    assert 'POST /api/v1/requests {"id": "gus"} -> 200' in out
    assert "GET /api/v1/requests/gus -> waiting, 0 ahead" in out
    for user in ("eve", "fay"):
        assert f"GET /api/v1/requests/{user} -> ready: http://" in out
        assert f"-> 'hmi {user}\\ncore: core {user}'" in out
    assert "DELETE /api/v1/requests/gus -> 204" in out
    assert "==> Done." in out
    # every child (devstack services, replicas, HAProxy, the users' fakes) is gone
    leftover = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == ""
