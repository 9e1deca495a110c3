"""Service registration in the embedded Consul, with checks Consul really runs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.nomad import EmbeddedNomad
from devstack.nomad.client import consul_sync
from devstack.nomad.client.consul_sync import ConsulSync
from devstack.nomad.testing import requires_embedded_nomad

from .helpers import SECOND, allocs, raw_exec_job, register, wait_for

pytestmark = [pytest.mark.contract, pytest.mark.integration, requires_embedded_nomad]

HTTP_SERVER = (
    "import http.server, os\n"
    "if os.environ.get('PID_FILE'): open(os.environ['PID_FILE'], 'w').write(str(os.getpid()))\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(os.environ['NOMAD_PORT_http'])), H).serve_forever()\n"
)


def _web_job(job_id: str, pid_file: str = "") -> dict[str, Any]:
    task = {
        "Env": {"PID_FILE": pid_file},
        "Name": "server",
        "Driver": "raw_exec",
        "Config": {"command": sys.executable, "args": ["-c", HTTP_SERVER]},
        "Resources": {"CPU": 100, "MemoryMB": 64},
        "Services": [
            {
                "Name": "web",
                "PortLabel": "http",
                "Tags": ["v1", "alloc-${NOMAD_ALLOC_INDEX}"],
                "Meta": {"owner": "contract"},
                "Checks": [
                    {
                        "Name": "alive",
                        "Type": "http",
                        "Path": "/health",
                        "Interval": SECOND,
                        "Timeout": SECOND,
                    },
                ],
            }
        ],
    }
    return raw_exec_job(
        job_id,
        [task],
        Networks=[{"DynamicPorts": [{"Label": "http"}]}],
        Services=[
            {
                "Name": "web-tcp",
                "PortLabel": "http",
                "Checks": [{"Type": "tcp", "Interval": SECOND, "Timeout": SECOND}],
            }
        ],
        RestartPolicy={"Attempts": 0, "Interval": 60 * SECOND, "Delay": SECOND, "Mode": "fail"},
        ReschedulePolicy={"Attempts": 0, "Unlimited": False},
    )


@pytest.fixture
def nomad(nomad_with_consul: EmbeddedNomad) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=nomad_with_consul.url, timeout=10) as client:
        yield client


@pytest.fixture
def consul(consul_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=consul_server.url, timeout=10) as client:
        yield client


def _health(consul: httpx.Client, name: str) -> list[dict[str, Any]]:
    return list(consul.get(f"/v1/health/service/{name}").json())


def test_raw_exec_http_service_becomes_passing_then_critical(
    nomad: httpx.Client, consul: httpx.Client, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    register(nomad, _web_job("web", str(pid_file)))
    alloc = wait_for(
        lambda: next((a for a in allocs(nomad, "web") if a["ClientStatus"] == "running"), None)
    )
    full = nomad.get(f"/v1/allocation/{alloc['ID']}").json()
    port = full["AllocatedResources"]["Shared"]["Ports"][0]["Value"]

    entries = wait_for(
        lambda: [
            e for e in _health(consul, "web") if all(c["Status"] == "passing" for c in e["Checks"])
        ],
        timeout=10,
    )
    service = entries[0]["Service"]
    assert service["ID"] == f"_nomad-task-{alloc['ID']}-server-web-http"
    assert service["Address"] == "127.0.0.1"
    assert service["Port"] == port
    assert service["Tags"] == ["v1", "alloc-0"]
    assert service["Meta"] == {"owner": "contract", "external-source": "nomad"}
    check = next(c for c in entries[0]["Checks"] if c["ServiceID"] == service["ID"])
    assert check["CheckID"].startswith("_nomad-check-")
    assert len(check["CheckID"]) == 13 + 64
    assert check["Name"] == "alive"
    group_svc = wait_for(
        lambda: [
            e
            for e in _health(consul, "web-tcp")
            if all(c["Status"] == "passing" for c in e["Checks"])
        ]
    )
    assert group_svc[0]["Service"]["ID"] == f"_nomad-task-{alloc['ID']}-group-app-web-tcp-http"

    # Freeze the server behind Nomad's back: Consul's check times out and goes critical.
    agent = consul.get("/v1/agent/services").json()
    assert service["ID"] in agent
    stopped = int(wait_for(lambda: pid_file.exists() and pid_file.read_text()))
    os.kill(stopped, signal.SIGSTOP)
    try:
        critical = wait_for(
            lambda: [
                e
                for e in _health(consul, "web")
                if any(c["Status"] == "critical" for c in e["Checks"])
            ],
            timeout=10,
        )
        assert critical[0]["Service"]["ID"] == service["ID"]
    finally:
        # Then it dies: no restarts allowed, so the task fails and its services go away.
        os.kill(stopped, signal.SIGKILL)
    wait_for(lambda: nomad.get(f"/v1/allocation/{alloc['ID']}").json()["ClientStatus"] == "failed")
    wait_for(lambda: service["ID"] not in consul.get("/v1/agent/services").json())
    wait_for(lambda: _health(consul, "web-tcp") == [])


def test_services_are_deregistered_when_the_job_stops(
    nomad: httpx.Client, consul: httpx.Client
) -> None:
    register(nomad, _web_job("short"))
    wait_for(lambda: _health(consul, "web"))
    nomad.delete("/v1/job/short")
    wait_for(lambda: _health(consul, "web") == [] and _health(consul, "web-tcp") == [])
    assert not [s for s in consul.get("/v1/agent/services").json() if s.startswith("_nomad-task-")]


def test_server_stop_deregisters_everything(consul_server: Any, consul: httpx.Client) -> None:
    with (
        EmbeddedNomad(consul_addr=consul_server.url, docker_start_delay=0.01) as server,
        httpx.Client(base_url=server.url, timeout=10) as nomad,
    ):
        register(nomad, _web_job("gone"))
        wait_for(lambda: _health(consul, "web"))
    assert consul.get("/v1/agent/services").json() == {}


def test_consul_services_need_consul_on_the_node(nomad_http: httpx.Client) -> None:
    """Without Consul, nodes lack ``consul.version``: the implied constraint filters them."""
    register(nomad_http, _web_job("no-consul"))
    blocked = wait_for(
        lambda: [
            e
            for e in nomad_http.get("/v1/job/no-consul/evaluations").json()
            if e["Status"] == "blocked"
        ]
    )
    assert blocked[0]["FailedTGAllocs"]["app"]["ConstraintFiltered"] == {
        "${attr.consul.version} semver >= 1.8.0": 3
    }


def test_service_tag_change_updates_the_registration_in_place(
    nomad: httpx.Client, consul: httpx.Client
) -> None:
    job = _web_job("inplace")
    register(nomad, job)
    first = wait_for(
        lambda: next((a for a in allocs(nomad, "inplace") if a["ClientStatus"] == "running"), None)
    )
    wait_for(lambda: _health(consul, "web"))
    job["TaskGroups"][0]["Tasks"][0]["Services"][0]["Tags"] = ["v2"]
    job["TaskGroups"][0]["Services"][0]["Tags"] = ["tcp-v2"]
    plan = nomad.post("/v1/job/inplace/plan", json={"Job": job, "Diff": True}).json()
    assert plan["Annotations"]["DesiredTGUpdates"]["app"]["InPlaceUpdate"] == 1
    register(nomad, job)
    entries = wait_for(
        lambda: [e for e in _health(consul, "web") if e["Service"]["Tags"] == ["v2"]]
    )
    assert entries[0]["Service"]["ID"] == f"_nomad-task-{first['ID']}-server-web-http"
    wait_for(lambda: [e for e in _health(consul, "web-tcp") if e["Service"]["Tags"] == ["tcp-v2"]])
    # The same allocation, still running, now on the new job version.
    live = [a for a in allocs(nomad, "inplace") if a["ClientStatus"] == "running"]
    assert [a["ID"] for a in live] == [first["ID"]]
    assert live[0]["JobVersion"] == 1


def test_the_periodic_sync_registers_only_what_consul_lacks_or_holds_differently(
    consul_server: Any, consul: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nomad's 30 s sync compares with the agent: unchanged services are not written again
    (at 1,000 users, re-registering everything was 3,000 writes every 30 s), while a service
    deregistered or edited behind Nomad's back is put back."""
    monkeypatch.setattr(consul_sync, "RESYNC_SECONDS", 0.3)
    regs = [
        {
            "ID": f"_nomad-task-sync-{i}-t-svc{i}-p",
            "Name": f"svc{i}",
            "Tags": ["route-http"],
            "Address": "127.0.0.1",
            "Port": 21000 + i,
            "Meta": {"external-source": "nomad"},
            "EnableTagOverride": False,
            "Checks": [{"CheckID": f"_nomad-check-sync-{i}", "Name": "c", "TTL": "60s"}],
        }
        for i in range(20)
    ]

    async def scenario() -> None:
        sync = ConsulSync(consul_server.url)
        await sync.start()
        try:
            sync.set("alloc", regs)
            assert await sync.flush(5)
            assert sync.registrations == 20
            await asyncio.sleep(1.2)  # several periodic syncs
            assert sync.registrations == 20
            gone, edited = regs[3]["ID"], {**regs[7], "Port": 1, "Checks": []}
            await asyncio.to_thread(consul.put, f"/v1/agent/service/deregister/{gone}")
            await asyncio.to_thread(consul.put, "/v1/agent/service/register", json=edited)
            await asyncio.sleep(1.2)
            assert sync.registrations == 22
        finally:
            await sync.close()

    asyncio.run(scenario())
    held = consul.get("/v1/agent/services").json()
    assert held == {}  # close() deregistered everything, the restored ones included


def test_the_periodic_sync_restores_what_consul_lost(
    consul_server: Any, consul: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consul_sync, "RESYNC_SECONDS", 0.3)
    reg = {
        "ID": "_nomad-task-restore-t-svc-p",
        "Name": "restored",
        "Tags": ["a"],
        "Address": "127.0.0.1",
        "Port": 22000,
        "Meta": {"external-source": "nomad"},
        "EnableTagOverride": False,
        "Checks": [{"CheckID": "_nomad-check-restore", "Name": "c", "TTL": "60s"}],
    }

    async def scenario() -> dict[str, Any]:
        sync = ConsulSync(consul_server.url)
        await sync.start()
        try:
            sync.set("alloc", [reg])
            assert await sync.flush(5)
            await asyncio.to_thread(consul.put, "/v1/agent/check/deregister/_nomad-check-restore")
            await asyncio.sleep(1.2)
            checks = await asyncio.to_thread(consul.get, "/v1/agent/checks")
            return dict(checks.json())
        finally:
            await sync.close()

    checks = asyncio.run(scenario())
    assert "_nomad-check-restore" in checks


def test_a_slow_registration_holds_no_other_back() -> None:
    """Each changed service is its own request: while Consul takes seconds over one, the
    others registered after it are in Consul at once (a batch waiting for its slowest request
    held every later registration back for seconds under load)."""
    from aiohttp import web

    async def scenario() -> None:
        done: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        async def register_handler(request: web.Request) -> web.Response:
            body = await request.json()
            if body["ID"] == "slow":
                await asyncio.sleep(3)
            done[body["ID"]] = loop.time()
            return web.Response(text="")

        async def deregister_handler(request: web.Request) -> web.Response:
            return web.Response(text="")

        app = web.Application()
        app.router.add_put("/v1/agent/service/register", register_handler)
        app.router.add_put("/v1/agent/service/deregister/{sid}", deregister_handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sync = ConsulSync(f"127.0.0.1:{runner.addresses[0][1]}")
        await sync.start()
        try:
            sync.set("a", [{"ID": "slow", "Name": "slow"}])
            await asyncio.sleep(0.2)
            started = loop.time()
            sync.set("b", [{"ID": f"fast-{i}", "Name": "fast"} for i in range(5)])
            while len(done) < 5 and loop.time() - started < 5:
                await asyncio.sleep(0.01)
            assert "slow" not in done
            assert sorted(done) == [f"fast-{i}" for i in range(5)]
            assert max(done.values()) - started < 1.0
            assert await sync.flush(5)
            assert "slow" in done
        finally:
            await sync.close()
            await runner.cleanup()

    asyncio.run(scenario())
