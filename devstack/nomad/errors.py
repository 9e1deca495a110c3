"""The one error type of the embedded Nomad: a message Nomad reports as plain text, and its status.

Nomad's HTTP layer answers every error as ``text/plain`` holding only the message; the logic
below the handlers raises :class:`NomadError` with the status and text Nomad uses, and the
HTTP layer turns it into the response.
"""

from __future__ import annotations


class NomadError(Exception):
    """An error Nomad reports as plain text with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
