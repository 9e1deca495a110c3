"""The project's own error tree.

Every client in ``reconciler.clients`` translates library exceptions (py-consul, httpx,
botocore) into these at its boundary, with ``raise X(...) from exc``, so the framework and the
controllers never see a library exception and never depend on which library sits underneath.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error this project raises on purpose."""


class ClientError(ReconcilerError):
    """A remote API call failed. ``status`` is the HTTP status when there was a response."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Unavailable(ClientError):
    """The remote end could not be reached or answered 5xx / timed out: worth retrying."""


class Timeout(Unavailable):
    """The remote end did not answer in time."""


class NotFound(ClientError):
    """The object asked for does not exist."""


class PermissionDenied(ClientError):
    """ACLs refused the request (HTTP 403)."""


class BadRequest(ClientError):
    """The remote end rejected the request as malformed (HTTP 400, Nomad validation errors)."""


class Conflict(ClientError):
    """A check-and-set or index check failed: somebody else wrote first."""


class TooLarge(ClientError):
    """The value or transaction exceeded a server limit (HTTP 413)."""


class Throttled(Unavailable):
    """The remote end asked us to slow down (HTTP 429, AWS throttling)."""


class ConfigError(ReconcilerError):
    """The environment or a controller declaration is invalid."""


class FencingError(ReconcilerError):
    """A write made while leading was rejected because this process no longer holds the lock."""


class LeadershipLost(ReconcilerError):
    """Raised into work that was cancelled because leadership was lost."""


class TransactionRolledBack(Conflict):
    """A Consul transaction was rolled back (HTTP 409); ``errors`` lists ``(op_index, what)``.

    The texts are Consul's own (``failed session check for key ...``), so a caller can tell a lost
    lock from a stale index without parsing the HTTP body again.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: list[tuple[int, str]],
        status: int | None = 409,
        body: str | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.errors = errors


class QuotaExceeded(TooLarge):
    """A cloud quota was hit (too many ELB listeners or load balancers): not worth retrying."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequest,
    401: PermissionDenied,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    429: Throttled,
}


def error_for_status(status: int, message: str, body: str | None = None) -> ClientError:
    """The generic place of an HTTP error status in the tree; 5xx and the unknown are retryable.

    Each client first handles what its product means by a status (Consul's 500 ``invalid
    session``, Nomad's 500 validation texts) and defers the rest here.
    """
    cls = _BY_STATUS.get(status) or (ClientError if 400 <= status < 500 else Unavailable)
    return cls(message, status=status, body=body)
