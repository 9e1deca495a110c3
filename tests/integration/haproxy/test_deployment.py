"""The haproxy controller's deployment material: a system job, a read-only policy, alerts.

The job is parsed by the embedded Nomad (HCL2, Nomad's jobspec rules). The policy is loaded
into an ACL-enforcing embedded Consul and the controller really runs with nothing but it: it
routes users, and the token can write nothing at all. The alert rules only use series the
controller exports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from controllers.haproxy import metrics
from controllers.haproxy.controller import HAProxyRouter
from controllers.settings import HAProxySettings, env_table
from devstack.consul import ConsulServer
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import PermissionDenied
from reconciler.manager import Manager, ManagerOptions
from tests.integration.helpers import eventually
from tests.integration.routing.test_charts import FRAMEWORK_ENV, parsed

from .backends import containers
from .conftest import DOMAIN, host, user_routes
from .test_routing import core_of, first_line, until

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[3]
MASTER = "root-token-for-tests"


def test_the_job_is_a_system_job_beside_haproxy_reading_only_known_settings(
    nomad_server: Any,
) -> None:
    job = parsed(nomad_server, "haproxy")
    assert (job["ID"], job["Type"]) == ("manticore-haproxy", "system")
    assert job["Constraints"][0]["LTarget"] == "${meta.haproxy}"
    (group,) = job["TaskGroups"]
    checks = {s["Name"]: s["Checks"][0] for s in group["Services"]}
    assert checks["reconciler"]["Path"] == "/readyz"
    assert checks["manticore-haproxy"]["Path"] == "/haproxy"
    (task,) = group["Tasks"]
    assert task["Config"]["args"] == ["run", "haproxy"]
    (template,) = task["Templates"]
    assert 'nomadVar "nomad/jobs/manticore-haproxy"' in template["EmbeddedTmpl"]
    env = set(task["Env"])
    known = {row[0] for row in env_table()} | FRAMEWORK_ENV
    assert env <= known, f"unknown variables {sorted(env - known)}"
    assert {"DOMAIN_NAME", "TCP_PORT_RANGE_START", "MANTICORE_HAPROXY_BIND_ADDRESS"} <= env
    assert "CONSUL_HTTP_TOKEN" not in env


def test_alert_rules_use_only_exported_haproxy_series() -> None:
    metrics.init()
    exported = {s.name for f in REGISTRY.collect() for s in f.samples}
    rules = yaml.safe_load((ROOT / "charts/prometheus/haproxy-alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    used: set[str] = set()
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        names = set(re.findall(r"\bmanticore_haproxy_[a-z_]+", alert["expr"]))
        assert names, alert["alert"]
        assert names <= exported, f"{alert['alert']} uses {sorted(names - exported)}"
        used |= names
    for essential in ("config_valid", "reload_failures_total", "slots_in_use", "drift_total"):
        assert f"manticore_haproxy_{essential}" in used


@pytest.fixture
def acl_consul():  # type: ignore[no-untyped-def]
    with ConsulServer(acl_master_token=MASTER, acl_default_policy="deny") as server:
        yield server


def create_token(address: str, policy_file: Path) -> str:
    headers = {"X-Consul-Token": MASTER}
    with httpx.Client(base_url=f"http://{address}", headers=headers) as http:
        http.put(
            "/v1/acl/policy", json={"Name": policy_file.stem, "Rules": policy_file.read_text()}
        ).raise_for_status()
        token = http.put("/v1/acl/token", json={"Policies": [{"Name": policy_file.stem}]})
        token.raise_for_status()
        return str(token.json()["SecretID"])


def failures(controller: str) -> float:
    """Watch errors and reconcile errors of ``controller`` (an ACL denial shows up as one)."""
    total = 0.0
    for family in REGISTRY.collect():
        if family.name in ("reconciler_watch_errors", "controller_runtime_reconcile_errors"):
            total += sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("controller") == controller
            )
    return total


@pytest.mark.anyio
async def test_the_controller_routes_with_its_read_only_token_and_can_write_nothing(
    acl_consul: ConsulServer, haproxy_settings: HAProxySettings
) -> None:
    """Only charts/policies/haproxy.hcl: users are routed (HTTP and TCP), come and go, no
    request of the controller is denied, and its token can neither write anything (its own
    input included) nor read outside ``haproxy/``."""
    settings = haproxy_settings
    secret = create_token(acl_consul.address, ROOT / "charts/policies/haproxy.hcl")
    scoped = ClientsConfig.from_env(
        {"CONSUL_HTTP_ADDR": acl_consul.address, "CONSUL_HTTP_TOKEN": secret}
    )
    admin = ClientsConfig.from_env(
        {"CONSUL_HTTP_ADDR": acl_consul.address, "CONSUL_HTTP_TOKEN": MASTER}
    )
    name = "haproxy-acl"
    router = HAProxyRouter(config=settings, name=name)
    manager = Manager(
        [router.declaration(tick=0.2)],
        options=ManagerOptions(metrics_port=0),
        config=scoped,
    )
    ports = settings.tcp_port_range
    with containers("webapp", "alice", "bob") as c:
        async with (
            ConsulClient(admin.consul) as root,
            ConsulClient(scoped.consul) as limited,
            anyio.create_task_group() as tg,
        ):
            await root.kv_put("manticore/requests/data/alice", b"{}")
            await tg.start(manager.run)
            await root.kv_put("haproxy/domainName", DOMAIN.encode())
            await root.kv_put("haproxy/webAppAddresses/0", c["webapp"].hmi.encode())
            await root.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
            await root.kv_put("haproxy/data/bob", user_routes(c["bob"], ports[1]))
            await eventually(lambda: manager.ready, timeout=20)
            await until("hmi alice", first_line, settings, host("alice"), timeout=20)
            await until("hmi bob", first_line, settings, host("bob"), timeout=20)
            assert await core_of(ports[0]) == "core alice"
            assert await core_of(ports[1]) == "core bob"
            # A user leaving is seen through the same read-only watch.
            await root.kv_delete("haproxy/data/bob")
            await until("status 404", first_line, settings, host("bob"), timeout=10)
            assert await core_of(ports[1]) == ""
            assert await first_line(settings, host("alice")) == "hmi alice"
            requests = REGISTRY.get_sample_value(
                "reconciler_watch_requests_total", {"controller": name, "source": "kv:haproxy/"}
            )
            assert requests, "the watch's requests are not counted under this name"
            assert failures(name) == 0
            for key in (
                "haproxy/data/alice",
                "haproxy/data/mallory",
                "haproxy/domainName",
                "reconciler/status/x",
                "manticore/requests/data/alice",
            ):
                with pytest.raises(PermissionDenied):
                    await limited.kv_put(key, b"{}")
                with pytest.raises(PermissionDenied):
                    await limited.kv_delete(key)
            with pytest.raises(PermissionDenied):
                await limited.kv_get("manticore/requests/data/alice")
            # Nothing it tried changed anything.
            _, alice = await root.kv_get("haproxy/data/alice")
            assert alice is not None
            assert alice.value == user_routes(c["alice"], ports[0])
            manager.stop()
