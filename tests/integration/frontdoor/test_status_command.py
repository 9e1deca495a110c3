"""``reconciler status`` against an embedded Consul and Nomad: the operator's table."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from controllers.api.expiry import EXPIRY_PREFIX
from tests.integration.frontdoor.helpers import PAGE, REQ, page, routes

pytestmark = [pytest.mark.integration]


def put(consul, key: str, value: bytes) -> None:
    with httpx.Client(base_url=consul.url) as http:
        http.put(f"/v1/kv/{key}", content=value).raise_for_status()


def status(consul, nomad, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONSUL_HTTP_ADDR": consul.address, "NOMAD_ADDR": nomad.url}
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_row_per_user_with_everything_they_own(consul_server, nomad_server) -> None:
    job = {
        "Job": {
            "ID": "core-hmi-ada",
            "Name": "core-hmi-ada",
            "Type": "service",
            "Datacenters": ["dc1"],
            "TaskGroups": [
                {
                    "Name": "pair",
                    "Count": 1,
                    "Tasks": [
                        {
                            "Name": "core",
                            "Driver": "docker",
                            "Config": {"image": "fake"},
                            "Resources": {"CPU": 100, "MemoryMB": 64},
                        }
                    ],
                }
            ],
        }
    }
    with httpx.Client(base_url=nomad_server.url) as http:
        http.post("/v1/jobs", json=job).raise_for_status()
    for user in ("ada", "bob", "cy"):
        put(consul_server, REQ + user, b"{}")
    put(consul_server, PAGE, page(claimed=["ada"], waiting=["bob", "cy"]))
    put(consul_server, "haproxy/data/ada", routes(core_port=20009))
    put(consul_server, "haproxy/data/zed", routes(hmi="z" * 16, core_port=20010))
    put(
        consul_server,
        "manticore/allocations/data/ada",
        json.dumps(
            {
                "services": {"core": {"address": "127.0.0.1", "port": 9003, "route": "tcp"}},
                "job": "core-hmi-ada",
                "allocation": "0123456789abcdef",
                "node": "node-1",
            }
        ).encode(),
    )
    ends = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    record = {
        "started_at": (ends - dt.timedelta(minutes=11)).isoformat(),
        "warn_at": (ends - dt.timedelta(minutes=1)).isoformat(),
        "expires_at": ends.isoformat(),
    }
    put(consul_server, EXPIRY_PREFIX + "ada", json.dumps(record).encode())

    done = status(consul_server, nomad_server)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "3 user(s), 2 waiting, 1 claimed" in lines[0]
    assert lines[1].startswith("leaders: waitlist=-")
    header = lines[3].split()
    assert header[:4] == ["USER", "POS", "CLAIMED", "STATE"]
    table = {line.split()[0]: line for line in lines[4:]}
    assert table["ada"].split()[1:4] == ["-", "yes", "ready"]
    assert "pending" in table["ada"] or "running" in table["ada"]  # the Nomad job's status
    assert "01234567@node-1" in table["ada"]
    assert "core:20009" in table["ada"]
    assert "4m" in table["ada"] or "5m" in table["ada"]
    assert table["bob"].split()[1:4] == ["1", "no", "waiting"]
    assert table["cy"].split()[1:4] == ["2", "no", "waiting"]
    # zed has no request but still a route: shown, so the leftover is seen
    assert table["zed"].split()[1:4] == ["-", "no", "leaving"]

    as_json = status(consul_server, nomad_server, "--json", "--no-nomad")
    document = json.loads(as_json.stdout)
    assert [u["user"] for u in document["users"]] == ["ada", "bob", "cy", "zed"]
    assert document["summary"]["nomad"] == "not configured"


def test_watch_redraws_on_change(consul_server, nomad_server) -> None:
    env = {**os.environ, "CONSUL_HTTP_ADDR": consul_server.address, "NOMAD_ADDR": nomad_server.url}
    argv = [sys.executable, "-m", "reconciler.cli", "status", "--watch", "--json"]
    with subprocess.Popen(
        [*argv, "--interval", "30"], env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            first = json.loads(proc.stdout.readline())
            assert first["users"] == []
            started = time.monotonic()
            put(consul_server, REQ + "dee", b"{}")
            # redrawn on the change (a blocking query on manticore/), not after the interval
            second = json.loads(proc.stdout.readline())
            assert [u["user"] for u in second["users"]] == ["dee"]
            assert time.monotonic() - started < 25
        finally:
            proc.terminate()
            proc.wait(10)
