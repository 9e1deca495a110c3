"""The fake core and HMI: alone as processes, and as a real raw_exec job on the devstack.

They stand in for Manticore's containers in every devstack test and the demo, and the HAProxy
tests route real traffic to them, so what they answer is pinned down here: the HMI page and the
broker name their user and say whether core answered, a broker websocket reaches core, and the
core greets with its user id and echoes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from controllers.api.ids import job_id
from controllers.templates import JobTemplate, TemplateValues
from devstack.fakes import RAW_EXEC_TEMPLATE, job_settings_env
from devstack.fakes._wire import OP_TEXT, encode_frame, read_frame
from devstack.process import free_ports

pytestmark = [pytest.mark.integration]


def wait_until(check, timeout: float = 20.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(every)


def http_text(address: str, path: str = "/") -> str:
    try:
        resp = httpx.get(f"http://{address}{path}", timeout=3, trust_env=False)
    except httpx.HTTPError:
        return ""
    return resp.text if resp.status_code == 200 else ""


async def tcp_greeting(address: str, payload: bytes = b"ping\n") -> tuple[bytes, bytes]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        hello = await asyncio.wait_for(reader.readline(), 3)
        writer.write(payload)
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 3)
        return hello, echoed
    finally:
        writer.close()


async def websocket_messages(address: str, send: list[str], expect: int) -> list[str]:
    """Open a websocket (client frames masked), send ``send``, collect ``expect`` messages."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            (
                f"GET /any/path HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 101 ")
        # RFC 6455's own example key and accept value.
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        out: list[str] = []
        for text in send:
            writer.write(encode_frame(OP_TEXT, text.encode(), mask=True))
        await writer.drain()
        while len(out) < expect:
            _, opcode, payload = await asyncio.wait_for(read_frame(reader), 3)
            assert opcode == OP_TEXT
            out.append(payload.decode())
        return out
    finally:
        writer.close()


@contextlib.contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_fakes_as_processes_answer_with_their_user() -> None:
    core_port, hmi_port, broker_port = free_ports(3)
    core = f"127.0.0.1:{core_port}"
    with (
        process("devstack.fakes.core", "--user", "ada", "--core-port", str(core_port)) as c,
        process(
            "devstack.fakes.hmi",
            "--user",
            "ada",
            "--hmi-port",
            str(hmi_port),
            "--broker-port",
            str(broker_port),
            "--core",
            core,
        ) as h,
    ):
        # both processes start at once: wait until the HMI has seen its core once
        page = wait_until(
            lambda: "core: core" in (text := http_text(f"127.0.0.1:{hmi_port}", "/p?x=1")) and text
        )
        assert page == "hmi ada\ncore: core ada\n"
        assert http_text(f"127.0.0.1:{broker_port}") == "broker ada\ncore: core ada\n"
        # keep-alive: several requests on one connection
        with httpx.Client(base_url=f"http://127.0.0.1:{hmi_port}", trust_env=False) as http:
            assert [http.get(f"/{i}").text.split("\n")[0] for i in range(3)] == ["hmi ada"] * 3
            assert http.head("/").status_code == 200
        hello, echoed = asyncio.run(tcp_greeting(core, b"hello core\n"))
        assert (hello, echoed) == (b"core ada\n", b"hello core\n")
        hmi_ws = asyncio.run(websocket_messages(f"127.0.0.1:{hmi_port}", ["one", "two"], 3))
        assert hmi_ws == ["hmi ada", "one", "two"]
        broker_ws = asyncio.run(websocket_messages(f"127.0.0.1:{broker_port}", [], 1))
        assert broker_ws == ["core ada\n"]
        # without its core, the HMI still answers and says so
        c.terminate()
        assert c.wait(timeout=10) == 0
        page = wait_until(lambda: "unreachable" in http_text(f"127.0.0.1:{hmi_port}"))
        assert http_text(f"127.0.0.1:{hmi_port}").startswith("hmi ada\ncore: unreachable (")
        assert h.poll() is None
        # garbage on the HTTP port closes that connection only
        asyncio.run(_send_garbage(hmi_port))
        assert http_text(f"127.0.0.1:{hmi_port}").startswith("hmi ada\n")
        h.terminate()
        assert h.wait(timeout=10) == 0


async def _send_garbage(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00\x01 not http at all\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()


def test_fake_hmi_refuses_to_start_without_a_user() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "devstack.fakes.hmi", "--hmi-port", "1"],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "MANTICORE_USER"},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert b"--user" in proc.stderr


def _passing(consul_url: str, service: str) -> list[dict]:  # type: ignore[type-arg]
    resp = httpx.get(
        f"{consul_url}/v1/health/service/{service}", params={"passing": "1"}, trust_env=False
    )
    resp.raise_for_status()
    return list(resp.json())


def test_raw_exec_template_runs_the_fakes_on_the_devstack(consul_server, nomad_with_consul) -> None:
    env = job_settings_env()
    template = JobTemplate.load(
        RAW_EXEC_TEMPLATE, variables=dict([env["MANTICORE_JOB_VARS"].split("=", 1)])
    )
    values = TemplateValues(
        user="ada",
        core_version="8.2.0",
        core_build="default",
        hmi_type="generic",
        hmi_version="master",
        domain="manticore.localhost",
        datacenters=("dc1",),
        variables={"python": sys.executable},
    )
    job = template.render(values)
    resp = httpx.post(
        f"{nomad_with_consul.url}/v1/jobs", json={"Job": job}, timeout=10, trust_env=False
    )
    assert resp.status_code == 200, resp.text
    addresses: dict[str, str] = {}
    for role in ("hmi", "broker", "core"):
        name = f"{job_id('ada')}-{role}"
        entries = wait_until(lambda name=name: _passing(consul_server.url, name), timeout=30)
        svc = entries[0]["Service"]
        assert svc["Meta"]["manticore_user"] == "ada"
        assert svc["Meta"]["manticore_role"] == role
        assert svc["Meta"]["manticore_route"] == ("tcp" if role == "core" else "http")
        assert svc["Tags"] == ["manticore", f"route-{'tcp' if role == 'core' else 'http'}"]
        addresses[role] = f"{svc['Address']}:{svc['Port']}"
    # The HMI found its core through NOMAD_ADDR_core, inside the one task group (the two
    # tasks start together: wait until core has been up once).
    page = wait_until(lambda: "core: core" in (t := http_text(addresses["hmi"])) and t, timeout=30)
    assert page == "hmi ada\ncore: core ada\n"
    assert http_text(addresses["broker"]) == "broker ada\ncore: core ada\n"
    assert asyncio.run(tcp_greeting(addresses["core"]))[0] == b"core ada\n"
    assert asyncio.run(websocket_messages(addresses["broker"], [], 1)) == ["core ada\n"]
    # Purging the job stops both processes and removes the services.
    httpx.delete(
        f"{nomad_with_consul.url}/v1/job/{job_id('ada')}", params={"purge": "true"}, trust_env=False
    ).raise_for_status()
    wait_until(lambda: not http_text(addresses["hmi"]), timeout=30)
    wait_until(
        lambda: (
            not httpx.get(
                f"{consul_server.url}/v1/catalog/service/{job_id('ada')}-hmi", trust_env=False
            ).json()
        ),
        timeout=30,
    )
    assert json.loads(json.dumps(job))["Meta"]["manticore_owner"] == "manticore-reconciler"
