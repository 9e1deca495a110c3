"""The blocking-query index rules every watch shares, as a pure state machine."""

from __future__ import annotations

from reconciler.sources._watch import PollState, diff_items, replace_items


def test_index_rules() -> None:
    state = PollState()
    assert state.advance(5) is True  # first answer: always processed
    assert state.index == 5
    assert state.advance(5) is False  # same index: no change
    assert state.advance(9) is True
    assert state.index == 9
    assert state.advance(3) is True  # backwards: processed, and reset to 0
    assert (state.index, state.resets) == (0, 1)
    assert state.advance(0) is True  # a 0 from the server is never used: clamped to 1
    assert state.index == 1


def test_diff_and_replace_report_added_changed_and_removed() -> None:
    cache = {"a": 1, "b": 2, "c": 3}
    new = {"a": 1, "b": 20, "d": 4}
    assert diff_items(cache, new) == {"b", "c", "d"}
    assert replace_items(cache, new) == {"b", "c", "d"}
    assert cache == new
    assert replace_items(cache, dict(new)) == set()
