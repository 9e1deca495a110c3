"""The ``reconciler`` CLI and the manager's /metrics, /healthz and /readyz endpoints."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
import pytest

from reconciler.cli import main
from reconciler.clients.errors import ConfigError
from reconciler.controller import Context, Controller, Dependencies, Watch
from reconciler.manager import Manager, ManagerOptions
from reconciler.registry import discover, import_spec
from reconciler.sources.memory import MemorySource

SAMPLES = "tests.unit.sample_controllers"
_n = itertools.count()


def test_list_shows_what_each_controller_watches_and_writes(capsys) -> None:
    assert main(["--import", SAMPLES, "list"]) == 0
    out = capsys.readouterr().out
    assert "sample-alpha" in out
    assert "watches: memory: in/<id>" in out
    assert "writes:  out/<id>" in out
    assert "1 worker(s), every replica, resync 300s" in out
    assert "2 worker(s), leader-elected" in out


def test_help_is_available_everywhere(capsys) -> None:
    for argv in (["--help"], ["run", "--help"], ["list", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--drain-timeout" in out
    assert "--metrics-addr" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run"], "name at least one controller"),
        (["run", "nope"], "unknown controller(s) nope; registered: "),
        (["run", "--all", "sample-alpha"], "not both"),
    ],
)
def test_run_refuses_bad_selections_clearly(argv: list[str], message: str, capsys) -> None:
    assert main(["--import", SAMPLES, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    if "registered: " in message:
        # Every registered name is listed, sorted (the project's own and the imported ones).
        names = [n.strip() for n in err.split("registered: ", 1)[1].splitlines()[0].split(",")]
        assert {"greeter", "sample-alpha", "sample-beta"} <= set(names)
        assert names == sorted(names)


def test_import_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import"):
        import_spec("no.such.module")
    with pytest.raises(ConfigError, match="no attribute"):
        import_spec(f"{SAMPLES}:missing")
    with pytest.raises(ConfigError, match="not a Controller"):
        import_spec(f"{SAMPLES}:SOURCE")


def test_discover_finds_imports_and_rejects_duplicate_names() -> None:
    found = discover([SAMPLES, f"{SAMPLES}:alpha"])
    assert {"sample-alpha", "sample-beta"} <= set(found)


class GatedSource(MemorySource):
    """Ready only once the test says so."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.open = anyio.Event()

    async def run(self, emit: Any, *, controller: str) -> None:
        await self.open.wait()
        await super().run(emit, controller=controller)


@pytest.mark.anyio
async def test_manager_serves_metrics_health_and_readiness() -> None:
    source = GatedSource()
    seen: list[str] = []
    name = f"mgr-{next(_n)}"

    async def reconcile(ctx: Context, key: str) -> None:
        seen.append(key)

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[Watch("gated", lambda deps: source)],
        needs_leadership=False,
        status=False,
    )
    manager = Manager(
        [controller],
        options=ManagerOptions(metrics_port=0, drain_timeout=2),
        deps=Dependencies(consul=None),
    )
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as http:
        await tg.start(manager.run)
        assert manager.health is not None
        base = f"http://127.0.0.1:{manager.health.port}"

        metrics = await http.get(f"{base}/metrics")
        assert metrics.status_code == 200
        # pre-initialised to zero before any reconcile
        assert (
            f'controller_runtime_reconcile_total{{controller="{name}",result="success"}} 0.0'
            in (metrics.text)
        )
        assert f'workqueue_depth{{controller="{name}",name="{name}"}}' in metrics.text
        # Not leader-elected: no leader-status series, so a no-leader alert cannot fire for it.
        assert f'leader_election_master_status{{name="{name}"}}' not in metrics.text
        assert (await http.get(f"{base}/healthz")).json()["ok"] is True

        not_ready = await http.get(f"{base}/readyz")
        assert not_ready.status_code == 503
        detail: Mapping[str, Any] = not_ready.json()["controllers"][name]
        assert detail == {"sources": {"gated": False}, "leadership": "not-elected"}

        source.set("k1", 1)
        source.open.set()
        with anyio.fail_after(5):
            while (await http.get(f"{base}/readyz")).status_code != 200:
                await anyio.sleep(0.01)
            while not seen:
                await anyio.sleep(0.01)
        metrics = await http.get(f"{base}/metrics")
        assert (
            f'controller_runtime_reconcile_total{{controller="{name}",result="success"}} 1.0'
            in (metrics.text)
        )
        assert (await http.get(f"{base}/nope")).status_code == 404
        assert (await http.post(f"{base}/metrics")).status_code == 405
        manager.stop()
    assert seen == ["k1"]


def test_manager_refuses_duplicate_or_missing_controllers() -> None:
    async def reconcile(ctx: Context, key: str) -> None:
        return None

    one = Controller(name="same", reconcile=reconcile, watches=[])
    with pytest.raises(ConfigError, match="unique"):
        Manager([one, one])
    with pytest.raises(ConfigError, match="at least one"):
        Manager([])
