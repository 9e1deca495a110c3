"""Failures on demand, so reliability tests can make Consul misbehave the way it does in production.

Real clusters answer slowly, fail with 500s, drop connections mid-request, lose their leader for a
few seconds, and restore snapshots that move the index backwards. The knobs here are read by the
HTTP middleware on every ``/v1`` request; one-shot actions (index reset, session expiry, forcing
a check critical) live on the server handle and the admin API because they act on the state.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

FIELDS = ("latency_ms", "error_rate", "drop_rate", "no_leader", "path_prefix")


@dataclass(slots=True)
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    no_leader: bool = False
    # Only requests whose path starts with this are disturbed (``/v1/kv/`` for example).
    path_prefix: str = "/v1/"

    def update(self, **changes: Any) -> None:
        for name, value in changes.items():
            if name not in FIELDS:
                raise ValueError(f"unknown fault {name!r}")
            if name in ("error_rate", "drop_rate"):
                value = float(value)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1")
            elif name == "latency_ms":
                value = float(value)
                if value < 0:
                    raise ValueError("latency_ms must be >= 0")
            elif name == "no_leader":
                value = bool(value)
            elif name == "path_prefix":
                value = str(value)
            setattr(self, name, value)

    def clear(self) -> None:
        self.update(
            latency_ms=0.0, error_rate=0.0, drop_rate=0.0, no_leader=False, path_prefix="/v1/"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def applies(self, path: str) -> bool:
        return path.startswith(self.path_prefix)

    def roll_drop(self) -> bool:
        return self.drop_rate > 0 and random.random() < self.drop_rate

    def roll_error(self) -> bool:
        return self.error_rate > 0 and random.random() < self.error_rate
