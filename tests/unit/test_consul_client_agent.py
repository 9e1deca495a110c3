"""Agent service registration through the typed client, against the embedded Consul."""

from __future__ import annotations

import anyio
import pytest

from reconciler.clients.config import ConsulConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import BadRequest

pytestmark = pytest.mark.anyio


async def test_register_with_a_check_then_deregister(consul_server) -> None:
    host, port = consul_server.address.rsplit(":", 1)
    async with ConsulClient(ConsulConfig(host=host, port=int(port))) as consul:
        await consul.agent_service_register(
            "web-app",
            service_id="web-app-1",
            address="127.0.0.1",
            port=4000,
            tags=["api"],
            meta={"component": "api"},
            check={"TTL": "30s", "Name": "alive"},
        )
        # Again: replaces, never duplicates.
        await consul.agent_service_register(
            "web-app", service_id="web-app-1", address="127.0.0.1", port=4001,
            check={"TTL": "30s", "Name": "alive"},
        )  # fmt: skip
        _, instances = await consul.health_service("web-app")
        (instance,) = instances
        assert (instance.service_id, instance.port) == ("web-app-1", 4001)
        assert [c.name for c in instance.checks if c.service_id] == ["alive"]
        assert instance.status == "critical"  # a TTL check starts critical until it is passed
        with pytest.raises(BadRequest):  # Consul's own validation, as our error
            await consul.agent_service_register("bad", check={"TTL": "not-a-duration"})
        await consul.agent_service_deregister("web-app-1")
        with anyio.fail_after(5):
            while (await consul.health_service("web-app"))[1]:
                await anyio.sleep(0.05)
