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


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string: double quotes, Go escapes for what is not printable."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def permission_denied(accessor: str, permission: str, resource: str = "") -> ConsulError:
    """``acl.PermissionDeniedError``: who lacks which permission, and on what when it is named.

    The accessor is the token's AccessorID; a request without a token is the anonymous token's
    (``00000000-0000-0000-0000-000000000002``). Global permissions (``acl``, ``operator``) and
    empty names carry no ``on`` part.
    """
    text = f"Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}'"
    if resource:
        text += f" on {go_quote(resource)}"
    return ConsulError(403, text)
