"""JSON bodies read the way Consul's Go decoder reads them, with Go's error texts.

Consul decodes request bodies with ``json.NewDecoder(body).Decode``: only the first JSON value
is read (trailing bytes are ignored), an empty body is ``EOF``, a truncated one ``unexpected
EOF``, and a syntax error reads ``invalid character 'x' looking for beginning of value``. Clients
that show those texts to people, and tests that compare them, must not see Python's words.
Python's parser does the decoding; when it fails, a small scanner modelled on Go's
``encoding/json`` state machine finds the error Go would report.
"""

from __future__ import annotations

import json
from typing import Any

_WS = b" \t\r\n"


class GoJSONError(ValueError):
    """A body Go's decoder refuses; ``str()`` is Go's error text."""


def decode(raw: bytes) -> Any:
    """The first JSON value of ``raw``, or :class:`GoJSONError` with Go's message."""
    end = _scan(raw)
    text = raw[:end].decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError as exc:  # pragma: no cover - the scanner accepted what json rejects
        raise GoJSONError(str(exc)) from exc


def _quote_char(c: int) -> str:
    """Go's ``quoteChar``: the offending byte as a quoted rune."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    ch = chr(c)
    if ch.isprintable():
        return f"'{ch}'"
    if c < 0x80:
        escapes = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}
        return "'" + escapes.get(c, f"\\x{c:02x}") + "'"
    return f"'\\u{c:04x}'"


def _invalid(c: int, context: str) -> GoJSONError:
    return GoJSONError(f"invalid character {_quote_char(c)} {context}")


class _Scanner:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def peek(self) -> int | None:
        return self.raw[self.pos] if self.pos < len(self.raw) else None

    def skip_ws(self) -> int | None:
        while self.pos < len(self.raw) and self.raw[self.pos] in _WS:
            self.pos += 1
        return self.peek()

    def need(self) -> int:
        c = self.peek()
        if c is None:
            raise GoJSONError("unexpected EOF")
        return c

    def value(self) -> None:
        c = self.skip_ws()
        if c is None:
            raise GoJSONError("unexpected EOF")
        if c == ord("{"):
            self.pos += 1
            self.obj()
        elif c == ord("["):
            self.pos += 1
            self.arr()
        elif c == ord('"'):
            self.pos += 1
            self.string()
        elif c == ord("-") or ord("0") <= c <= ord("9"):
            self.number()
        elif c in (ord("t"), ord("f"), ord("n")):
            self.literal()
        else:
            raise _invalid(c, "looking for beginning of value")

    def obj(self) -> None:
        c = self.skip_ws()
        if c is None:
            raise GoJSONError("unexpected EOF")
        if c == ord("}"):
            self.pos += 1
            return
        while True:
            c = self.skip_ws()
            if c is None:
                raise GoJSONError("unexpected EOF")
            if c != ord('"'):
                raise _invalid(c, "looking for beginning of object key string")
            self.pos += 1
            self.string()
            c = self.skip_ws()
            if c is None:
                raise GoJSONError("unexpected EOF")
            if c != ord(":"):
                raise _invalid(c, "after object key")
            self.pos += 1
            self.value()
            c = self.skip_ws()
            if c is None:
                raise GoJSONError("unexpected EOF")
            self.pos += 1
            if c == ord("}"):
                return
            if c != ord(","):
                raise _invalid(c, "after object key:value pair")

    def arr(self) -> None:
        c = self.skip_ws()
        if c is None:
            raise GoJSONError("unexpected EOF")
        if c == ord("]"):
            self.pos += 1
            return
        while True:
            self.value()
            c = self.skip_ws()
            if c is None:
                raise GoJSONError("unexpected EOF")
            self.pos += 1
            if c == ord("]"):
                return
            if c != ord(","):
                raise _invalid(c, "after array element")

    def string(self) -> None:
        while True:
            c = self.need()
            self.pos += 1
            if c == ord('"'):
                return
            if c == ord("\\"):
                e = self.need()
                self.pos += 1
                if e == ord("u"):
                    for _ in range(4):
                        h = self.need()
                        if chr(h) not in "0123456789abcdefABCDEF":
                            raise _invalid(h, "in \\u hexadecimal character escape")
                        self.pos += 1
                elif chr(e) not in '"\\/bfnrt':
                    raise _invalid(e, "in string escape code")
            elif c < 0x20:
                raise _invalid(c, "in string literal")

    def number(self) -> None:
        if self.peek() == ord("-"):
            self.pos += 1
            c = self.need()
            if not ord("0") <= c <= ord("9"):
                raise _invalid(c, "in numeric literal")
        if self.peek() == ord("0"):
            self.pos += 1
        else:
            self._digits()
        if self.peek() == ord("."):
            self.pos += 1
            c = self.need()
            if not ord("0") <= c <= ord("9"):
                raise _invalid(c, "after decimal point in numeric literal")
            self._digits()
        if self.peek() in (ord("e"), ord("E")):
            self.pos += 1
            if self.peek() in (ord("+"), ord("-")):
                self.pos += 1
            c = self.need()
            if not ord("0") <= c <= ord("9"):
                raise _invalid(c, "in exponent of numeric literal")
            self._digits()

    def _digits(self) -> None:
        while (c := self.peek()) is not None and ord("0") <= c <= ord("9"):
            self.pos += 1

    def literal(self) -> None:
        word = {ord("t"): "true", ord("f"): "false", ord("n"): "null"}[self.raw[self.pos]]
        for expected in word:
            c = self.need()
            if c != ord(expected):
                raise _invalid(c, f"in literal {word} (expecting {_quote_char(ord(expected))})")
            self.pos += 1


def _scan(raw: bytes) -> int:
    """Check the first value the way Go's scanner does; return where that value ends."""
    scanner = _Scanner(raw)
    if scanner.skip_ws() is None:
        raise GoJSONError("EOF")
    scanner.value()
    return scanner.pos


def unmarshal_type_error(
    value: Any, struct: str, field: str, type_name: str, *, literal: bool = False
) -> GoJSONError:
    """``json.UnmarshalTypeError``: into a struct field, or (no ``struct``) into a value."""
    kind = json_kind(value, literal=literal)
    if not struct:
        return GoJSONError(f"json: cannot unmarshal {kind} into Go value of type {type_name}")
    return GoJSONError(
        f"json: cannot unmarshal {kind} into Go struct field {struct}.{field} of type {type_name}"
    )


_B64 = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def go_b64decode(text: str) -> bytes:
    """``base64.StdEncoding.DecodeString`` with Go's ``illegal base64 data at input byte N``."""
    import base64

    data = text.encode("latin-1", "replace")
    body = data.rstrip(b"=")
    pad = len(data) - len(body)
    for i, c in enumerate(body):
        if c not in _B64 and c not in b"\r\n":
            raise GoJSONError(f"illegal base64 data at input byte {i}")
    clean = body.replace(b"\r", b"").replace(b"\n", b"")
    if (len(clean) + pad) % 4 or pad > 2 or (pad and len(clean) % 4 in (0, 1)):
        quantum = len(body) - len(clean) % 4 if len(clean) % 4 else len(body)
        raise GoJSONError(f"illegal base64 data at input byte {quantum}")
    return base64.b64decode(clean + b"=" * pad)


def json_kind(value: Any, *, literal: bool = False) -> str:
    """How Go names a JSON value in type errors; a number that does not fit its integer type
    carries its literal (``number -1``)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {json.dumps(value)}" if literal else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"
