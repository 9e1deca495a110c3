"""The greeter runs with nothing but its published ACL policy (charts/policies/greeter.hcl)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from devstack.consul import ConsulServer
from examples import greeter
from examples.greeter import IN, OUT
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import PermissionDenied
from reconciler.controller import RunnerOptions
from reconciler.manager import Manager, ManagerOptions
from tests.integration.helpers import eventually, wait_for_value

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
MASTER = "root-token-for-tests"


@pytest.fixture
def acl_consul():
    with ConsulServer(acl_master_token=MASTER, acl_default_policy="deny") as server:
        yield server


def create_token(address: str, policy_file: Path) -> str:
    headers = {"X-Consul-Token": MASTER}
    with httpx.Client(base_url=f"http://{address}", headers=headers) as http:
        policy = http.put(
            "/v1/acl/policy", json={"Name": policy_file.stem, "Rules": policy_file.read_text()}
        )
        policy.raise_for_status()
        token = http.put("/v1/acl/token", json={"Policies": [{"Name": policy_file.stem}]})
        token.raise_for_status()
        return str(token.json()["SecretID"])


async def test_greeter_converges_with_its_least_privilege_token(acl_consul) -> None:
    secret = create_token(acl_consul.address, ROOT / "charts/policies/greeter.hcl")
    scoped = ClientsConfig.from_env(
        {"CONSUL_HTTP_ADDR": acl_consul.address, "CONSUL_HTTP_TOKEN": secret}
    )
    admin = ClientsConfig.from_env(
        {"CONSUL_HTTP_ADDR": acl_consul.address, "CONSUL_HTTP_TOKEN": MASTER}
    )
    manager = Manager(
        [greeter.controller],
        options=ManagerOptions(metrics_port=0, runner=RunnerOptions(identity="scoped")),
        config=scoped,
    )
    async with (
        ConsulClient(admin.consul) as root,
        ConsulClient(scoped.consul) as limited,
        anyio.create_task_group() as tg,
    ):
        await tg.start(manager.run)
        await eventually(lambda: manager.ready and manager.runners["greeter"].is_leader)
        await root.kv_put(f"{IN}erin", b'{"greeting": "hello"}')
        await wait_for_value(root, f"{OUT}erin", b'{"message":"hello, erin!"}')
        await root.kv_delete(f"{IN}erin")
        await wait_for_value(root, f"{OUT}erin", None)
        # ...and the token really is narrow: it cannot write its own input or anything else
        with pytest.raises(PermissionDenied):
            await limited.kv_put(f"{IN}erin", b"{}")
        with pytest.raises(PermissionDenied):
            await limited.kv_put("manticore/requests/data/x", b"{}")
        manager.stop()
