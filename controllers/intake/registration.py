"""The API registers itself in Consul as the web app, which haproxy-kv publishes to HAProxy.

``haproxy-kv`` lists the passing instances of ``MANTICORE_WEB_APP_SERVICE`` in
``haproxy/webAppAddresses``, so an instance is in HAProxy's web app backend exactly while it is
registered on its local agent and its HTTP check on ``/healthz`` passes. It deregisters when it
shuts down (before it stops answering); an instance that is killed turns critical and Consul
removes it after ``MANTICORE_API_DEREGISTER_AFTER``.

This is a write outside the fenced KV: the API is not leader-elected, and an agent registration
belongs to the instance that makes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from controllers.intake import metrics
from reconciler.clients.consul import ConsulClient

log = logging.getLogger("controllers.intake")


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Registration:
    """One API instance in Consul's catalog."""

    service: str
    service_id: str
    address: str
    port: int
    check_interval: float = 10.0
    deregister_after: float = 60.0

    @property
    def check_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/healthz"

    def definition(self) -> dict[str, Any]:
        return {
            "ID": self.service_id,
            "Name": self.service,
            "Address": self.address,
            "Port": self.port,
            "Tags": ["manticore", "api"],
            "Meta": {"component": "manticore-api"},
            "Check": {
                "Name": f"{self.service} /healthz",
                "HTTP": self.check_url,
                "Interval": _duration(self.check_interval),
                "Timeout": _duration(min(5.0, self.check_interval)),
                "DeregisterCriticalServiceAfter": _duration(self.deregister_after),
            },
        }

    async def register(self, consul: ConsulClient) -> None:
        d = self.definition()
        await consul.agent_service_register(
            d["Name"],
            service_id=d["ID"],
            address=d["Address"],
            port=d["Port"],
            tags=d["Tags"],
            meta=d["Meta"],
            check=d["Check"],
        )
        metrics.REGISTERED.set(1)
        log.info(
            "registered %s as %s at %s:%d", self.service_id, self.service, self.address, self.port
        )

    async def deregister(self, consul: ConsulClient) -> None:
        await consul.agent_service_deregister(self.service_id)
        metrics.REGISTERED.set(0)
        log.info("deregistered %s", self.service_id)
