"""The result contract of a reconcile, interpreted in exactly one place (the controller runner).

A reconcile either returns (optionally a :class:`Result` asking to run again later), raises
:class:`TemporaryError` (retry with per-key backoff, or after the delay it names) or raises
:class:`TerminalError` (no retry; counted and logged). Any other exception is treated as a
temporary error: logged with its traceback, counted, and retried with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.clients.errors import ReconcilerError


@dataclass(frozen=True, slots=True)
class Result:
    """What a successful reconcile asks for next.

    ``requeue_after``: run this key again after that many seconds (periodic checks, waiting for
    an external system). ``requeue``: run it again soon, through the rate limiter.
    """

    requeue_after: float | None = None
    requeue: bool = False

    def __post_init__(self) -> None:
        if self.requeue_after is not None and self.requeue_after < 0:
            raise ValueError("requeue_after must be >= 0")


DONE = Result()


class TemporaryError(ReconcilerError):
    """The world is not ready yet; retry. ``delay`` overrides the per-key exponential backoff."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and delay < 0:
            raise ValueError("delay must be >= 0")
        self.delay = delay


class TerminalError(ReconcilerError):
    """Retrying cannot help (invalid input, a spec that can never be satisfied): do not retry.

    The key runs again only when one of its sources changes or on the next resync.
    """


class InvalidValue(TerminalError):
    """A value read from Consul or Nomad failed validation (malformed JSON, wrong shape).

    ``index`` is the ModifyIndex of the value when it is known (a read through ``ctx.kv``), so
    the status entry reported for it says which version of the input was looked at.
    """

    def __init__(
        self, message: str, *, kind: str, key: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.key = key
        self.index = index
