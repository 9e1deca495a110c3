"""The layering contracts cover every framework module (a new module cannot slip past them)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_clients_contract_lists_every_framework_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    clients = next(c for c in contracts if c.get("source_modules") == ["reconciler.clients"])
    forbidden = set(clients["forbidden_modules"])
    modules = {
        f"reconciler.{p.stem}" if p.is_file() else f"reconciler.{p.name}"
        for p in (ROOT / "reconciler").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    missing = modules - forbidden - {"reconciler.clients"}
    assert not missing, f"add {sorted(missing)} to the clients contract in pyproject.toml"
