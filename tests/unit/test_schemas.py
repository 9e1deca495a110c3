"""The committed JSON Schemas match the models (the same check CI runs)."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.schemas import main

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schemas_are_up_to_date() -> None:
    assert main([str(ROOT / "crds-equivalent-schemas"), "--check"]) == 0


def test_generation_writes_one_schema_per_model_and_detects_drift(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 0
    schema = json.loads((tmp_path / "reconciler-leader-record.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"controller", "holder", "session", "acquired_at"}
    (tmp_path / "reconciler-leader-record.schema.json").write_text("{}")
    assert main([str(tmp_path), "--check"]) == 1
    (tmp_path / "stale.schema.json").write_text("{}")
    assert main([str(tmp_path)]) == 0
    assert not (tmp_path / "stale.schema.json").exists()
    assert main([str(tmp_path), "--check"]) == 0
