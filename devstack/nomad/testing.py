"""pytest fixtures for the embedded nomad.

One contract suite runs against the emulator and a real cluster: ``nomad_target``,
``nomad_http`` and ``nomad_client_config`` point at ``NOMAD_ADDR`` when it is set (with
``NOMAD_TOKEN``), at a fresh embedded server otherwise. ``nomad_server`` is always the embedded
handle (no Consul), ``nomad_with_consul`` one registering services in the embedded Consul of
``consul_server``; mark tests of emulator-only behaviour (adding nodes, marking them down,
simulated docker knobs) with ``requires_embedded_nomad`` so they are skipped against a real
cluster.
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

from devstack.nomad.embedded import EmbeddedNomad

ACL_MASTER_TOKEN = "devstack-nomad-root-token"
# Simulated docker tasks start quickly in tests; real pulls take seconds.
TEST_DOCKER_START_DELAY = 0.05


def real_nomad_addr() -> str | None:
    """The URL of the real cluster named by ``NOMAD_ADDR``, if any."""
    addr = os.environ.get("NOMAD_ADDR", "").strip().rstrip("/")
    if not addr:
        return None
    return addr if "://" in addr else f"http://{addr}"


requires_embedded_nomad = pytest.mark.skipif(
    real_nomad_addr() is not None, reason="emulator-only behaviour (NOMAD_ADDR is set)"
)


@dataclass(frozen=True)
class NomadTarget:
    """Where a contract test sends its requests, and whether that is the emulator."""

    url: str
    token: str | None
    server: EmbeddedNomad | None

    @property
    def embedded(self) -> bool:
        return self.server is not None

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Nomad-Token": self.token} if self.token else {}


def start_embedded_nomad(**options: Any) -> EmbeddedNomad:
    options.setdefault("docker_start_delay", TEST_DOCKER_START_DELAY)
    return EmbeddedNomad(**options).start()


@pytest.fixture
def nomad_server() -> Iterator[EmbeddedNomad]:
    """A fresh embedded Nomad (3 nodes of 4000 MHz / 8192 MB, ACLs off, no Consul)."""
    server = start_embedded_nomad()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nomad_with_consul(consul_server: Any) -> Iterator[EmbeddedNomad]:
    """An embedded Nomad whose clients register services in the test's embedded Consul."""
    server = start_embedded_nomad(consul_addr=consul_server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nomad_target(request: pytest.FixtureRequest) -> NomadTarget:
    real = real_nomad_addr()
    if real is not None:
        return NomadTarget(real, os.environ.get("NOMAD_TOKEN") or None, None)
    server: EmbeddedNomad = request.getfixturevalue("nomad_server")
    return NomadTarget(server.url, None, server)


@pytest.fixture
def nomad_http(nomad_target: NomadTarget) -> Iterator[httpx.Client]:
    """A raw HTTP client for the cluster under test, carrying ``NOMAD_TOKEN`` if set."""
    with httpx.Client(
        base_url=nomad_target.url, headers=nomad_target.headers, timeout=30.0
    ) as client:
        yield client


@pytest.fixture
def nomad_client_config(nomad_target: NomadTarget) -> Any:
    """A ``reconciler.clients.config.NomadConfig`` for the cluster under test."""
    from reconciler.clients.config import NomadConfig

    return NomadConfig(address=nomad_target.url, token=nomad_target.token)


@pytest.fixture
def job_id(nomad_http: httpx.Client) -> Iterator[str]:
    """A unique job ID for one test, purged afterwards (a real cluster is shared)."""
    jid = f"contract-{uuid.uuid4().hex[:10]}"
    yield jid
    with contextlib.suppress(httpx.HTTPError):
        nomad_http.delete(f"/v1/job/{jid}", params={"purge": "true"})


@pytest.fixture
def nomad_acl_target() -> Iterator[NomadTarget]:
    """A cluster with ACLs on and its management token.

    Against a real cluster this needs ``NOMAD_TOKEN`` to be a management token.
    """
    real = real_nomad_addr()
    if real is not None:
        token = os.environ.get("NOMAD_TOKEN")
        if not token:
            pytest.skip("ACL contract tests need NOMAD_TOKEN (a management token)")
        yield NomadTarget(real, token, None)
        return
    server = start_embedded_nomad(acl_master_token=ACL_MASTER_TOKEN)
    try:
        yield NomadTarget(server.url, ACL_MASTER_TOKEN, server)
    finally:
        server.stop()
