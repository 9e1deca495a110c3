"""Decode a JSON array element by element, as its bytes arrive.

A Consul list answer can be tens of megabytes (``/v1/health/state/any`` is ~1.3 KB a check:
38 MB at 30,000 checks). Decoding it with ``json.loads`` holds the whole text, then every
element as dicts and strings (~4x the text), before the first element can be turned into
something compact. :class:`ArrayDecoder` takes the body chunk by chunk, decodes each complete
element with :meth:`json.JSONDecoder.raw_decode` and hands it to ``convert`` at once, so what is
alive at the peak is the converted result plus one chunk and one element, whatever the size of
the answer. Elements split across chunks (mid-string, mid-escape, mid multi-byte character)
decode exactly as ``json.loads`` of the whole text would.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_WS = re.compile(r"[ \t\n\r]*")

# Where the decoder is in the array's grammar.
_START, _FIRST, _ELEMENT, _SEPARATOR, _END = range(5)

# An element larger than this is refused rather than buffered without bound.
MAX_ELEMENT = 16 * 1024 * 1024


class StreamDecodeError(ValueError):
    """The body is not one JSON array (or an element is larger than ``max_element``)."""


class ArrayDecoder(Generic[T]):
    """Feed bytes with :meth:`feed`, then :meth:`close`; ``items`` holds ``convert(element)``
    for every element in order."""

    def __init__(self, convert: Callable[[Any], T], *, max_element: int = MAX_ELEMENT) -> None:
        self._convert = convert
        self._max = max_element
        self._json = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._state = _START
        self.items: list[T] = []
        self.elements = 0

    def feed(self, data: bytes) -> None:
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise StreamDecodeError(f"body is not UTF-8: {exc}") from exc
        self._buf = self._buf + text if self._buf else text
        self._parse(final=False)

    def close(self) -> list[T]:
        """End of the body: the converted elements (raises if the array is incomplete)."""
        try:
            tail = self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise StreamDecodeError(f"body is not UTF-8: {exc}") from exc
        self._buf += tail
        self._parse(final=True)
        if self._state != _END:
            raise StreamDecodeError("body ended inside the JSON array")
        return self.items

    def _parse(self, *, final: bool) -> None:
        buf = self._buf
        end = len(buf)
        pos = 0
        state = self._state
        try:
            while True:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= end:
                    break
                char = buf[pos]
                if state == _START:
                    if char != "[":
                        got = buf[pos : pos + 20]
                        raise StreamDecodeError(f"expected a JSON array, got {got!r}")
                    state = _FIRST
                    pos += 1
                elif state == _SEPARATOR or (state == _FIRST and char == "]"):
                    if char == "]":
                        state = _END
                    elif char == "," and state == _SEPARATOR:
                        state = _ELEMENT
                    else:
                        raise StreamDecodeError(f"expected ',' or ']' at {buf[pos : pos + 20]!r}")
                    pos += 1
                elif state == _END:
                    raise StreamDecodeError(f"data after the JSON array: {buf[pos : pos + 20]!r}")
                else:
                    try:
                        value, stop = self._json.raw_decode(buf, pos)
                    except json.JSONDecodeError as exc:
                        if final:
                            raise StreamDecodeError(f"bad JSON element: {exc}") from exc
                        break  # incomplete: wait for more bytes
                    if stop >= end and not final:
                        # A value ending exactly at the end of the buffer may be cut short
                        # (a number, ``tru``); a complete array always has ',' or ']' after it.
                        break
                    pos = stop
                    state = _SEPARATOR
                    self.elements += 1
                    self.items.append(self._convert(value))
        finally:
            self._state = state
            self._buf = buf[pos:] if pos < end else ""
        if len(self._buf) > self._max:
            raise StreamDecodeError(f"a JSON element is larger than {self._max} characters")
