"""The only code that talks to Consul, Nomad and AWS; maps their errors to our own tree."""

from reconciler.clients.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    Conflict,
    FencingError,
    LeadershipLost,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    ReconcilerError,
    Throttled,
    Timeout,
    TooLarge,
    TransactionRolledBack,
    Unavailable,
)

__all__ = [
    "BadRequest",
    "ClientError",
    "ConfigError",
    "Conflict",
    "FencingError",
    "LeadershipLost",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "ReconcilerError",
    "Throttled",
    "Timeout",
    "TooLarge",
    "TransactionRolledBack",
    "Unavailable",
]
