"""The committed JSON Schemas match the models (the same check CI runs)."""

from __future__ import annotations

import json
from pathlib import Path

from examples import greeter
from reconciler.schemas import collect, main

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schemas_are_up_to_date() -> None:
    assert main([str(ROOT / "crds-equivalent-schemas"), "--check"]) == 0


def test_models_come_from_registered_controllers_and_the_framework() -> None:
    models = collect()
    # The greeter declares its models on its Controller and is registered as an entry point
    # only; nothing in the framework lists it.
    assert models["example-greeting"] is greeter.Greeting
    assert models["example-message"] is greeter.Message
    assert {"reconciler-leader-record", "reconciler-status"} <= set(models)
    extra = collect(imports=["tests.unit.sample_controllers"])
    assert "sample-input" in extra


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
