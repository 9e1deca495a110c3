"""Generate (or check) the JSON Schemas of every KV value model: ``crds-equivalent-schemas/``.

What CRDs are to Kubernetes operators, these schemas are to ours: the published contract of each
KV value, committed and diffed in CI so a model change is always a visible schema change. The
models come from the registered controllers (``Controller(models={...})``, found through the
``reconciler.controllers`` entry points, as ``reconciler run`` finds them) plus the framework's
own values (leader records, status entries); ``--import`` adds controllers from a module and
``--module`` a module's ``KV_MODELS`` mapping.

    python -m reconciler.schemas DIR [--check] [--import pkg.mod] [--module pkg.mod]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel

from reconciler.leader import KV_MODELS as LEADER_MODELS
from reconciler.registry import discover
from reconciler.status import KV_MODELS as STATUS_MODELS


def collect(modules: Sequence[str] = (), imports: Sequence[str] = ()) -> dict[str, type[BaseModel]]:
    """Schema name -> model, from the framework, every registered controller, and ``modules``."""
    found: dict[str, type[BaseModel]] = {}

    def add(models: Mapping[str, type[BaseModel]], origin: str) -> None:
        for schema_name, model in models.items():
            if schema_name in found and found[schema_name] is not model:
                raise SystemExit(f"schema name {schema_name!r} is used by two models ({origin})")
            found[schema_name] = model

    add(LEADER_MODELS, "reconciler.leader")
    add(STATUS_MODELS, "reconciler.status")
    for controller in discover(imports).values():
        add(controller.models, f"controller {controller.name}")
    for name in modules:
        module = importlib.import_module(name)
        add(getattr(module, "KV_MODELS", {}), name)
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
    parser.add_argument(
        "--module", action="append", dest="modules", default=[], help="a module's KV_MODELS too"
    )
    parser.add_argument(
        "--import", action="append", dest="imports", default=[], help="controllers of a module"
    )
    args = parser.parse_args(argv)
    models = collect(args.modules, args.imports)
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
