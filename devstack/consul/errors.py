"""The one error type of the emulated agent: Consul's status code and its plain-text body.

Consul answers every failure with a status and a short text (``Missing key name``, ``invalid
session "x"``, ``Permission denied: ...``), never a JSON body. Every layer raises this, from the
state operations up to the handlers, and the HTTP middleware turns it into the response.
"""

from __future__ import annotations


class ConsulError(Exception):
    """An error answered with Consul's status code and plain-text body."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def bad_request(text: str) -> ConsulError:
    return ConsulError(400, text)


def server_error(text: str) -> ConsulError:
    return ConsulError(500, text)


def permission_denied(accessor: str = "", permission: str = "", resource: str = "") -> ConsulError:
    if accessor and permission:
        return ConsulError(
            403,
            f"Permission denied: token with AccessorID '{accessor}' lacks permission "
            f"'{permission}' on \"{resource}\"",
        )
    return ConsulError(403, "Permission denied")
