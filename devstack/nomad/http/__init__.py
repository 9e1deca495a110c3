"""Nomad's HTTP API over the embedded server (handlers by resource; :mod:`.app` wires them)."""

from __future__ import annotations

from .app import SERVER_KEY, build_app

__all__ = ["SERVER_KEY", "build_app"]
