"""Typed KV values: bad input becomes a clear InvalidValue, encoding is canonical."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from reconciler.kv import MAX_VALUE_SIZE, decode, encode
from reconciler.result import InvalidValue, TerminalError


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queue: int
    claimed: bool = False
    note: str | None = None


def test_decode_valid_value() -> None:
    assert decode(Entry, b'{"queue": 3, "claimed": true}') == Entry(queue=3, claimed=True)


@pytest.mark.parametrize(
    ("raw", "kind", "text"),
    [
        (b"{not json", "malformed-json", "invalid Entry at 'k'"),
        (b'{"queue": "x"}', "schema", "queue"),
        (b'{"queue": 1, "extra": 2}', "schema", "extra"),
        (b"", "empty", "empty value"),
        (None, "empty", "empty value"),
        (b"x" * (MAX_VALUE_SIZE + 1), "oversized", "bytes"),
    ],
)
def test_decode_rejects_bad_input_with_a_clear_terminal_error(
    raw: bytes | None, kind: str, text: str
) -> None:
    with pytest.raises(InvalidValue, match=text) as info:
        decode(Entry, raw, key="k")
    assert info.value.kind == kind
    assert info.value.key == "k"
    assert isinstance(info.value, TerminalError)


def test_encode_is_canonical_and_drops_none() -> None:
    assert encode(Entry(queue=1, claimed=False)) == b'{"claimed":false,"queue":1}'


@given(st.integers(min_value=-(2**62), max_value=2**62), st.booleans(), st.none() | st.text())
def test_encode_decode_round_trip(queue: int, claimed: bool, note: str | None) -> None:
    value = Entry(queue=queue, claimed=claimed, note=note)
    assert decode(Entry, encode(value)) == value
    assert encode(decode(Entry, encode(value))) == encode(value)
