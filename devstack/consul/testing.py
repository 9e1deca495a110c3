"""pytest fixtures for the embedded consul.

One contract suite runs against both the emulator and a real agent: ``consul_addr``,
``consul_http`` and ``consul_client`` point at ``CONSUL_HTTP_ADDR`` when it is set (with
``CONSUL_HTTP_TOKEN``), and at a fresh embedded agent otherwise. ``consul_server`` is always the
embedded handle, for tests of what only the emulator offers (faults, the admin API); mark those
with ``requires_embedded`` so they are skipped against a real agent.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devstack.consul.server import ConsulServer

ACL_MASTER_TOKEN = "devstack-root-token"


def real_consul_addr() -> str | None:
    """``host:port`` of the real agent named by ``CONSUL_HTTP_ADDR``, if any."""
    addr = os.environ.get("CONSUL_HTTP_ADDR", "").strip()
    if not addr:
        return None
    for scheme in ("http://", "https://"):
        if addr.startswith(scheme):
            addr = addr[len(scheme) :]
    return addr.rstrip("/")


requires_embedded = pytest.mark.skipif(
    real_consul_addr() is not None, reason="emulator-only behaviour (CONSUL_HTTP_ADDR is set)"
)


@dataclass(frozen=True)
class ConsulTarget:
    """Where a contract test sends its requests, and whether that is the emulator."""

    address: str
    token: str | None
    server: ConsulServer | None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def embedded(self) -> bool:
        return self.server is not None


@contextlib.contextmanager
def py_consul(address: str, token: str | None = None) -> Iterator[Any]:
    """A py-consul client whose HTTP session is really closed afterwards.

    py-consul's own ``close()`` leaves its ``requests`` session open, which pytest's
    warnings-as-errors turns into a failure.
    """
    import consul

    host, port = address.rsplit(":", 1)
    client = consul.Consul(host=host, port=int(port), token=token)
    try:
        yield client
    finally:
        client.http.session.close()


@pytest.fixture
def consul_server() -> Iterator[ConsulServer]:
    """A fresh embedded agent (ACLs off), stopped after the test."""
    server = ConsulServer(node_name="devstack").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def consul_target(request: pytest.FixtureRequest) -> ConsulTarget:
    real = real_consul_addr()
    if real is not None:
        return ConsulTarget(real, os.environ.get("CONSUL_HTTP_TOKEN") or None, None)
    server: ConsulServer = request.getfixturevalue("consul_server")
    return ConsulTarget(server.address, None, server)


@pytest.fixture
def consul_addr(consul_target: ConsulTarget) -> str:
    """``host:port`` of the agent under test (real if ``CONSUL_HTTP_ADDR`` is set)."""
    return consul_target.address


@pytest.fixture
def consul_http(consul_target: ConsulTarget) -> Iterator[httpx.Client]:
    """A raw HTTP client for the agent under test, carrying ``CONSUL_HTTP_TOKEN`` if set."""
    headers = {"X-Consul-Token": consul_target.token} if consul_target.token else {}
    with httpx.Client(base_url=consul_target.url, headers=headers, timeout=30.0) as client:
        yield client


@pytest.fixture
def consul_client(consul_target: ConsulTarget) -> Iterator[Any]:
    """A py-consul client for the agent under test."""

    with py_consul(consul_target.address, consul_target.token) as client:
        yield client


@pytest.fixture
def kv_prefix(consul_http: httpx.Client) -> Iterator[str]:
    """A unique KV prefix for one test, deleted afterwards (a real agent is shared)."""
    prefix = f"contract-{uuid.uuid4().hex[:12]}/"
    yield prefix
    with contextlib.suppress(httpx.HTTPError):
        consul_http.delete(f"/v1/kv/{prefix}", params={"recurse": ""})


@pytest.fixture
def consul_acl_target(request: pytest.FixtureRequest) -> Iterator[ConsulTarget]:
    """An agent with ACLs on (default deny) and its management token.

    Against a real agent this needs ``CONSUL_HTTP_TOKEN`` to be a management token.
    """
    real = real_consul_addr()
    if real is not None:
        token = os.environ.get("CONSUL_HTTP_TOKEN")
        if not token:
            pytest.skip("ACL contract tests need CONSUL_HTTP_TOKEN (a management token)")
        yield ConsulTarget(real, token, None)
        return
    server = ConsulServer(node_name="devstack", acl_master_token=ACL_MASTER_TOKEN).start()
    try:
        yield ConsulTarget(server.address, ACL_MASTER_TOKEN, server)
    finally:
        server.stop()
