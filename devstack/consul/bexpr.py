"""The ``?filter=`` expressions of Consul list endpoints (a subset of hashicorp/go-bexpr).

Clients such as Nomad's service syncer send filters like ``Meta["external-source"] == "nomad"``
or ``"web" in Service.Tags``. Supported: ``==``, ``!=``, ``in``, ``not in``, ``contains``,
``not contains``, ``matches``, ``not matches``, ``is empty``, ``is not empty``, ``and``, ``or``,
``not`` and parentheses, over dotted or ``["key"]`` selectors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from devstack.consul.errors import server_error

_TOKENS = re.compile(
    r'\s+|(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<op>==|!=|\(|\)|\[|\]|\.)|(?P<word>[^\s"()\[\].=!`]+)'
)
Predicate = Callable[[Any], bool]


class FilterError(ValueError):
    pass


def _lex(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKENS.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"unexpected character {text[pos]!r} at {pos}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")
            value = (
                raw[1:-1] if raw[0] == "`" else bytes(raw[1:-1], "utf-8").decode("unicode_escape")
            )
            out.append(("str", value))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        elif m.group("word") is not None:
            out.append(("word", m.group("word")))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.toks[i] if i < len(self.toks) else None

    def word(self, value: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok[0] == "word" and tok[1].lower() == value

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of expression")
        self.pos += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.or_()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def or_(self) -> Predicate:
        left = self.and_()
        while self.word("or"):
            self.pos += 1
            right = self.and_()
            left = (lambda a, b: lambda v: a(v) or b(v))(left, right)
        return left

    def and_(self) -> Predicate:
        left = self.not_()
        while self.word("and"):
            self.pos += 1
            right = self.not_()
            left = (lambda a, b: lambda v: a(v) and b(v))(left, right)
        return left

    def not_(self) -> Predicate:
        if self.word("not"):
            self.pos += 1
            inner = self.not_()
            return lambda v: not inner(v)
        if self.peek() == ("op", "("):
            self.pos += 1
            inner = self.or_()
            if self.take() != ("op", ")"):
                raise FilterError("missing )")
            return inner
        return self.match()

    def value(self) -> str:
        kind, value = self.take()
        if kind not in ("str", "word"):
            raise FilterError(f"expected a value, got {value!r}")
        return value

    def selector(self) -> list[str]:
        kind, first = self.take()
        if kind != "word":
            raise FilterError(f"expected a selector, got {first!r}")
        path = [first]
        while True:
            tok = self.peek()
            if tok == ("op", "."):
                self.pos += 1
                kind, part = self.take()
                if kind != "word":
                    raise FilterError("bad selector")
                path.append(part)
            elif tok == ("op", "["):
                self.pos += 1
                kind, part = self.take()
                if self.take() != ("op", "]"):
                    raise FilterError("missing ]")
                path.append(part)
            else:
                return path

    def match(self) -> Predicate:
        tok = self.peek()
        if (tok is not None and tok[0] == "str") or (
            tok is not None and (self.word("in", 1) or (self.word("not", 1) and self.word("in", 2)))
        ):
            needle = self.value()
            negate = False
            if self.word("not"):
                self.pos += 1
                negate = True
            if not self.word("in"):
                raise FilterError("expected 'in'")
            self.pos += 1
            path = self.selector()
            return lambda v: _contains(_lookup(v, path), needle) != negate
        path = self.selector()
        if self.word("is"):
            self.pos += 1
            negate = False
            if self.word("not"):
                self.pos += 1
                negate = True
            if not self.word("empty"):
                raise FilterError("expected 'empty'")
            self.pos += 1
            return lambda v: _empty(_lookup(v, path)) != negate
        negate = False
        if self.word("not"):
            self.pos += 1
            negate = True
        kind, op = self.take()
        if kind == "op" and op in ("==", "!="):
            target = self.value()
            want = op == "=="
            return lambda v: _equal(_lookup(v, path), target) == want
        if kind == "word" and op.lower() == "contains":
            target = self.value()
            return lambda v: _contains(_lookup(v, path), target) != negate
        if kind == "word" and op.lower() == "matches":
            try:
                rx = re.compile(self.value())
            except re.error as exc:
                raise FilterError(str(exc)) from exc
            return lambda v: (
                (isinstance(_lookup(v, path), str) and rx.search(_lookup(v, path)) is not None)
                != negate
            )
        raise FilterError(f"unknown operator {op!r}")


_MISSING = object()


def _lookup(value: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        else:
            return _MISSING
    return value


def _contains(haystack: Any, needle: str) -> bool:
    if isinstance(haystack, (list, dict)):
        return needle in haystack
    if isinstance(haystack, str):
        return needle in haystack
    return False


def _empty(value: Any) -> bool:
    return value is _MISSING or value is None or (hasattr(value, "__len__") and len(value) == 0)


def _equal(value: Any, target: str) -> bool:
    if isinstance(value, bool):
        return target.lower() == ("true" if value else "false")
    if isinstance(value, (int, float)):
        try:
            return float(target) == float(value)
        except ValueError:
            return False
    if isinstance(value, str):
        return value == target
    return False


def compile_filter(text: str) -> Predicate:
    try:
        return _Parser(_lex(text)).parse()
    except FilterError as exc:
        raise server_error(f"Failed to create boolean expression evaluator: {exc}") from exc


def apply_filter(items: list[Any], text: str) -> list[Any]:
    pred = compile_filter(text)
    return [item for item in items if pred(item)]


def apply_filter_map(items: dict[str, Any], text: str) -> dict[str, Any]:
    pred = compile_filter(text)
    return {k: v for k, v in items.items() if pred(v)}
