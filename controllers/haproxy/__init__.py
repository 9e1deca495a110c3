"""The haproxy controller: ``haproxy/`` in Consul KV -> the HAProxy running beside it.

``process`` (how HAProxy is validated, started and reloaded) is used by the devstack too;
``routes`` validates the input, ``plan`` decides between runtime commands and a reload,
``render`` writes the configuration and maps, ``runtime`` speaks the runtime API, ``applier``
carries a plan out, ``controller`` declares the controller. ``controller`` is resolved lazily so
that importing :mod:`controllers.haproxy.process` does not import the framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.controller import Controller

    controller: Controller


def __getattr__(name: str) -> Any:
    if name == "controller":
        from controllers.haproxy.controller import controller

        return controller
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
