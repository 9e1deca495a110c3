"""Shared test configuration: the anyio backend and the devstack fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["devstack.consul.testing", "devstack.nomad.testing"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
