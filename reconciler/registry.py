"""Finding controllers: installed entry points and explicitly named modules.

The framework never imports ``controllers/`` (layers point down). A package makes its controllers
known through the ``reconciler.controllers`` entry-point group (this project declares the
Manticore ones and the examples in pyproject.toml); a platform team can also name a module on
the command line (``--import mypkg.mycontroller``) or in ``RECONCILER_IMPORT``. A module or entry
point may provide one :class:`Controller`, a sequence of them, or a module attribute
``CONTROLLERS``/``controller``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from reconciler.clients.errors import ConfigError
from reconciler.controller import Controller

ENTRY_POINT_GROUP = "reconciler.controllers"


def _controllers_of(obj: Any, origin: str) -> list[Controller]:
    if isinstance(obj, Controller):
        return [obj]
    if isinstance(obj, ModuleType):
        for attr in ("CONTROLLERS", "controllers", "controller"):
            if hasattr(obj, attr):
                return _controllers_of(getattr(obj, attr), origin)
        raise ConfigError(f"{origin}: module defines no CONTROLLERS or controller")
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
        found: list[Controller] = []
        for item in obj:
            found.extend(_controllers_of(item, origin))
        return found
    raise ConfigError(f"{origin}: {obj!r} is not a Controller")


def import_spec(spec: str) -> list[Controller]:
    """``package.module`` or ``package.module:attribute``."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    if attr:
        try:
            obj = getattr(module, attr)
        except AttributeError as exc:
            raise ConfigError(f"{module_name} has no attribute {attr!r}") from exc
    return _controllers_of(obj, spec)


def discover(
    imports: Sequence[str] = (), *, entry_point_group: str = ENTRY_POINT_GROUP
) -> dict[str, Controller]:
    """Every known controller by name: entry points first, then explicit imports."""
    found: dict[str, Controller] = {}
    origins: dict[str, str] = {}

    def register(controllers: list[Controller], origin: str) -> None:
        for controller in controllers:
            previous = found.get(controller.name)
            if previous is not None and previous is not controller:
                raise ConfigError(
                    f"controller {controller.name!r} is defined twice "
                    f"({origins[controller.name]} and {origin})"
                )
            found[controller.name] = controller
            origins[controller.name] = origin

    for ep in entry_points(group=entry_point_group):
        try:
            loaded = ep.load()
        except ImportError as exc:
            raise ConfigError(f"entry point {ep.name} ({ep.value}): {exc}") from exc
        register(_controllers_of(loaded, f"entry point {ep.name}"), f"entry point {ep.name}")
    for spec in imports:
        register(import_spec(spec), spec)
    return found
