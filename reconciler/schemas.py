"""Generate (or check) the JSON Schemas of every KV value model: ``crds-equivalent-schemas/``.

What CRDs are to Kubernetes operators, these schemas are to ours: the published contract of each
KV value, committed and diffed in CI so a model change is always a visible schema change. A module
contributes models through a ``KV_MODELS`` mapping of schema name to pydantic model.

    python -m reconciler.schemas crds-equivalent-schemas [--check] [--module pkg.mod ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel

DEFAULT_MODULES = ("reconciler.leader", "controllers.api", "examples.greeter")


def collect(modules: Sequence[str]) -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for name in modules:
        module = importlib.import_module(name)
        models: Mapping[str, type[BaseModel]] = getattr(module, "KV_MODELS", {})
        for schema_name, model in models.items():
            if schema_name in found and found[schema_name] is not model:
                raise SystemExit(f"schema name {schema_name!r} is used by two models")
            found[schema_name] = model
    return found


def render(model: type[BaseModel], schema_name: str) -> str:
    schema = model.model_json_schema(mode="validation")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_name,
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.schemas", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if the directory is stale")
    parser.add_argument("--module", action="append", dest="modules", help="modules to scan")
    args = parser.parse_args(argv)
    models = collect(args.modules or DEFAULT_MODULES)
    wanted = {f"{name}.schema.json": render(model, name) for name, model in sorted(models.items())}
    directory: Path = args.directory
    present = (
        {p.name: p.read_text() for p in directory.glob("*.schema.json")}
        if directory.exists()
        else {}
    )
    if args.check:
        stale = sorted(n for n in wanted if present.get(n) != wanted[n])
        extra = sorted(set(present) - set(wanted))
        if stale or extra:
            print(f"schemas out of date: {stale + extra}; run `make schemas`", file=sys.stderr)
            return 1
        print(f"{len(wanted)} schemas up to date")
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    for name in set(present) - set(wanted):
        (directory / name).unlink()
    for name, text in wanted.items():
        if present.get(name) != text:
            (directory / name).write_text(text)
    print(f"wrote {len(wanted)} schemas to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
