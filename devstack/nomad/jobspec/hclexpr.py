"""HCL2 expressions in job files: ``variable`` and ``locals`` blocks, ``var.*`` and ``local.*``.

python-hcl2 hands back every expression as its source text wrapped in ``${...}`` (a bare
``count = var.n`` arrives as ``"${var.n}"``), and string templates as the template text. This
module evaluates those with the variables' values, the way Nomad's jobspec2 does before it
decodes the job:

* ``variable "name" { type, default, description, validation }`` and the older
  ``variables { name = default }``; values assigned by the request's ``Variables`` (the text of a
  var file: ``name = value`` lines) override defaults and are converted to the declared type
  (for ``string``/``number``/untyped variables a var-file value is taken as written, then
  converted); a variable without a default that nothing sets is ``Unset variable``, whether or
  not it is used, as Nomad reports it; names assigned but not declared are ignored (the API does
  not parse strictly).
* ``locals { ... }`` evaluated in dependency order, referring to variables and other locals.
* References to any other root (``attr``, ``node``, ``meta``, ``NOMAD_*``, ``env``) stay as
  ``${...}`` text for the client to interpolate, as jobspec2's unknown-variable hook keeps them.
* ``dynamic "<type>" { for_each, iterator, labels, content }`` blocks expand into one block
  per element (maps in key order), nested ones included, with ``<iterator>.key`` and
  ``<iterator>.value``.
* A template that is a single interpolation keeps the value's type (``count = var.n`` is a
  number); otherwise values are rendered into the string. ``$${`` and ``%%{`` escapes become
  ``${`` and ``%{``.

The expression language covered: literals (numbers, strings with interpolation, ``true``,
``false``, ``null``), tuples and objects, traversals with ``.attr`` and ``[index]``,
arithmetic, comparison and logic operators, the conditional ``a ? b : c``, parentheses, and the
common functions below. An expression using ``var``/``local`` with syntax outside that set is a
parse error that says so, never a silent pass-through. Errors read like HCL's diagnostics
(``input.hcl:LINE,COL-COL: Summary; Detail``) with positions found in the job file's text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

FILENAME = "input.hcl"


class ExprError(ValueError):
    """An HCL diagnostic (the text is already worded as Nomad prints it)."""


class _Unknown(Exception):
    """The expression refers to a root that is left for the client (``attr``, ``node``...)."""


# -- positions ---------------------------------------------------------------------------------


def _position(text: str, pattern: str, span_group: int = 0) -> str:
    """``input.hcl:L,C-E`` of the first match of ``pattern`` in ``text`` (``<nil>`` if none)."""
    match = re.search(pattern, text)
    if not match:
        return "<nil>"
    start, end = match.span(span_group)
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    end_col = col + (end - start)
    return f"{FILENAME}:{line},{col}-{end_col}"


# -- lexer -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||=>|\.\.\.|[-+*/%<>!?:.,()\[\]{}=])
  | (?P<quote>")
    """,
    re.VERBOSE,
)


def _read_string(src: str, pos: int) -> tuple[str, int]:
    """The raw template text of a quoted string starting after ``"``; returns (text, end)."""
    out: list[str] = []
    depth = 0
    i = pos
    while i < len(src):
        ch = src[i]
        if depth == 0 and ch == '"':
            return "".join(out), i + 1
        if ch == "\\" and i + 1 < len(src):
            out.append(src[i : i + 2])
            i += 2
            continue
        if src.startswith("$${", i):
            out.append("$${")
            i += 3
            continue
        if src.startswith("${", i):
            depth += 1
            out.append("${")
            i += 2
            continue
        if depth and ch == "{":
            depth += 1
        elif depth and ch == "}":
            depth -= 1
        elif depth and ch == '"':
            inner, i = _read_string(src, i + 1)
            out.append(f'"{inner}"')
            continue
        out.append(ch)
        i += 1
    raise ExprError("Unterminated template string; No closing marker was found for the string.")


def _tokens(src: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(src):
        match = _TOKEN.match(src, pos)
        if not match:
            raise ExprError(
                f"Invalid character; This character is not used within HCL syntax: {src[pos]!r}."
            )
        kind = match.lastgroup or ""
        pos = match.end()
        if kind == "ws":
            continue
        if kind == "quote":
            text, pos = _read_string(src, pos)
            out.append(("str", text))
        elif kind == "num":
            out.append(("num", match.group()))
        else:
            out.append((kind, match.group()))
    out.append(("end", ""))
    return out


# -- values ------------------------------------------------------------------------------------


def _number(text: str) -> int | float:
    value = float(text)
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )


def _tostring(value: Any) -> str:
    if value is None:
        raise ExprError(
            "Invalid template interpolation value; The expression result is null. Cannot "
            "include a null value in a string template."
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ExprError(
        "Invalid template interpolation value; Cannot include the given value in a string "
        "template: string required."
    )


def _tonumber(value: Any) -> int | float:
    if isinstance(value, bool) or value is None:
        raise ExprError("Invalid value; a number is required.")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return _number(value.strip())
        except ValueError:
            pass
    raise ExprError("Invalid value; a number is required.")


def _tobool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ExprError("Invalid value; a bool is required.")


def _go_format(fmt: str, *args: Any) -> str:
    values = list(args)

    def sub(match: re.Match[str]) -> str:
        verb = match.group(1)
        if verb == "%":
            return "%"
        if not values:
            raise ExprError(
                'Error in function call; Call to function "format" failed: not enough arguments.'
            )
        value = values.pop(0)
        if verb == "d":
            return str(int(_tonumber(value)))
        if verb == "q":
            return json.dumps(_tostring(value))
        return _tostring(value) if not isinstance(value, (list, dict)) else json.dumps(value)

    return re.sub(r"%[-+# 0-9.]*([a-zA-Z%])", sub, fmt)


def _regex(pattern: Any, text: Any) -> Any:
    match = re.search(_tostring(pattern), _tostring(text))
    if match is None:
        raise ExprError(
            'Error in function call; Call to function "regex" failed: pattern did not match '
            "any part of the given string."
        )
    if match.groupdict():
        return match.groupdict()
    if match.groups():
        return list(match.groups())
    return match.group(0)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "upper": lambda s: _tostring(s).upper(),
    "lower": lambda s: _tostring(s).lower(),
    "title": lambda s: _tostring(s).title(),
    "trimspace": lambda s: _tostring(s).strip(),
    "format": _go_format,
    "join": lambda sep, *lists: _tostring(sep).join(_tostring(x) for li in lists for x in li),
    "split": lambda sep, s: _tostring(s).split(_tostring(sep)),
    "replace": lambda s, old, new: _tostring(s).replace(_tostring(old), _tostring(new)),
    "concat": lambda *lists: [x for li in lists for x in li],
    "length": lambda v: len(v),
    "tostring": _tostring,
    "tonumber": _tonumber,
    "tobool": _tobool,
    "tolist": list,
    "toset": lambda v: sorted(set(v), key=str),
    "tomap": dict,
    "coalesce": lambda *vs: next((v for v in vs if v not in (None, "")), None),
    "lookup": lambda m, k, *default: m[k] if k in m else (default[0] if default else None),
    "contains": lambda li, v: v in li,
    "keys": lambda m: sorted(m),
    "values": lambda m: [m[k] for k in sorted(m)],
    "merge": lambda *ms: {k: v for m in ms for k, v in m.items()},
    "element": lambda li, i: li[int(_tonumber(i)) % len(li)],
    "min": lambda *ns: min(_tonumber(n) for n in ns),
    "max": lambda *ns: max(_tonumber(n) for n in ns),
    "abs": lambda n: abs(_tonumber(n)),
    "jsonencode": lambda v: json.dumps(v, separators=(",", ":")),
    "substr": lambda s, off, n: _tostring(s)[int(off) : int(off) + int(n) if int(n) >= 0 else None],
    "startswith": lambda s, prefix: _tostring(s).startswith(_tostring(prefix)),
    "endswith": lambda s, suffix: _tostring(s).endswith(_tostring(suffix)),
    "regex": _regex,
    "trimprefix": lambda s, p: _tostring(s).removeprefix(_tostring(p)),
    "trimsuffix": lambda s, p: _tostring(s).removesuffix(_tostring(p)),
}


# -- parser / evaluator ------------------------------------------------------------------------


class Scope:
    """What ``var`` and ``local`` resolve to, with the job file's text for error positions."""

    def __init__(self, source: str, variables: dict[str, Any]) -> None:
        self.source = source
        self.variables = variables
        self.locals: dict[str, Any] = {}
        self.local_exprs: dict[str, Any] = {}
        self._evaluating: set[str] = set()
        # A dynamic block's iterator (``<name>.key``, ``<name>.value``) while its content is
        # evaluated.
        self.iterators: dict[str, Any] = {}

    def with_iterator(self, name: str, key: Any, value: Any) -> Scope:
        child = Scope(self.source, self.variables)
        child.locals, child.local_exprs, child._evaluating = (
            self.locals,
            self.local_exprs,
            self._evaluating,
        )
        child.iterators = {**self.iterators, name: {"key": key, "value": value}}
        return child

    def refers(self, expr: str) -> bool:
        """Whether ``expr`` uses something this scope evaluates (not left for the client)."""
        if _REFERS.search(expr):
            return True
        return any(re.search(rf"\b{re.escape(n)}\s*\.", expr) for n in self.iterators)

    def root(self, name: str, attr: str) -> Any:
        if name == "var":
            if attr not in self.variables:
                raise self._unsupported("var", attr)
            return self.variables[attr]
        if attr in self.locals:
            return self.locals[attr]
        if attr not in self.local_exprs or attr in self._evaluating:
            raise self._unsupported("local", attr)
        self._evaluating.add(attr)
        try:
            self.locals[attr] = resolve(self.local_exprs[attr], self)
        finally:
            self._evaluating.discard(attr)
        return self.locals[attr]

    def _unsupported(self, root: str, attr: str) -> ExprError:
        where = _position(self.source, rf"\b{root}(\.{re.escape(attr)})\b", 1)
        return ExprError(
            f"{where}: Unsupported attribute; This object does not have an attribute named "
            f'"{attr}".'
        )


_BINARY = [
    ("||",),
    ("&&",),
    ("==", "!="),
    ("<", ">", "<=", ">="),
    ("+", "-"),
    ("*", "/", "%"),
]


def _apply(op: str, a: Any, b: Any) -> Any:
    if op == "||":
        return _tobool(a) or _tobool(b)
    if op == "&&":
        return _tobool(a) and _tobool(b)
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    x, y = _tonumber(a), _tonumber(b)
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        if y == 0:
            raise ExprError("Operation failed; Error during operation: divide by zero.")
        result = x / y
        return int(result) if result.is_integer() else result
    if op == "%":
        return x % y
    return {"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]


class _Parser:
    def __init__(self, src: str, scope: Scope) -> None:
        self.toks = _tokens(src)
        self.i = 0
        self.scope = scope

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self, value: str | None = None) -> tuple[str, Any]:
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            raise ExprError(
                f"Invalid expression; Expected {value!r}, found {tok[1] or 'the end'!r}."
            )
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.conditional()
        if self.peek()[0] != "end":
            raise ExprError(
                f"Extra characters after expression; An expression was successfully parsed, "
                f"but extra characters were found after it ({self.peek()[1]!r})."
            )
        return value

    def conditional(self) -> Any:
        cond = self.binary(0)
        if self.peek() == ("op", "?"):
            self.take()
            yes = self.conditional()
            self.take(":")
            no = self.conditional()
            return yes if _tobool(cond) else no
        return cond

    def binary(self, level: int) -> Any:
        if level == len(_BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in _BINARY[level]:
            op = self.take()[1]
            right = self.binary(level + 1)
            left = _apply(op, left, right)
        return left

    def unary(self) -> Any:
        if self.peek() == ("op", "-"):
            self.take()
            return -_tonumber(self.unary())
        if self.peek() == ("op", "!"):
            self.take()
            return not _tobool(self.unary())
        return self.postfix(self.primary())

    def postfix(self, value: Any) -> Any:
        while True:
            tok = self.peek()
            if tok == ("op", "."):
                self.take()
                kind, name = self.take()
                if kind == "num":
                    value = self._index(value, int(name))
                elif kind == "ident":
                    value = self._index(value, name)
                else:
                    raise ExprError("Invalid attribute name; An attribute name is required.")
            elif tok == ("op", "["):
                self.take()
                key = self.conditional()
                self.take("]")
                value = self._index(value, key)
            else:
                return value

    def _index(self, value: Any, key: Any) -> Any:
        try:
            if isinstance(value, list):
                return value[int(_tonumber(key))]
            if isinstance(value, dict):
                return value[_tostring(key)]
        except (IndexError, KeyError):
            pass
        raise ExprError(
            f"Invalid index; The given key does not identify an element in this collection "
            f"value ({key!r})."
        )

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            return _number(text)
        if kind == "str":
            return render(text, self.scope)
        if kind == "op" and text == "(":
            value = self.conditional()
            self.take(")")
            return value
        if kind == "op" and text == "[":
            items = []
            while self.peek() != ("op", "]"):
                items.append(self.conditional())
                if self.peek() == ("op", ","):
                    self.take()
            self.take("]")
            return items
        if kind == "op" and text == "{":
            obj = {}
            while self.peek() != ("op", "}"):
                key_kind, key = self.take()
                key = render(key, self.scope) if key_kind == "str" else key
                if self.peek()[1] not in ("=", ":"):
                    raise ExprError('Invalid object; Expected an equals sign ("=").')
                self.take()
                obj[_tostring(key)] = self.conditional()
                if self.peek() == ("op", ","):
                    self.take()
            self.take("}")
            return obj
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "null":
                return None
            if self.peek() == ("op", "("):
                return self._call(text)
            if text in ("var", "local"):
                self.take(".")
                attr_kind, attr = self.take()
                if attr_kind != "ident":
                    raise ExprError("Invalid attribute name; An attribute name is required.")
                return self.scope.root(text, attr)
            if text in self.scope.iterators:
                return self.scope.iterators[text]
            raise _Unknown(text)
        raise ExprError(
            f"Invalid expression; Expected the start of an expression, but found {text!r}."
        )

    def _call(self, name: str) -> Any:
        self.take("(")
        args = []
        while self.peek() != ("op", ")"):
            args.append(self.conditional())
            if self.peek() == ("op", ","):
                self.take()
            elif self.peek() == ("op", "..."):
                self.take()
                args.extend(args.pop())
        self.take(")")
        fn = FUNCTIONS.get(name)
        if fn is None:
            raise ExprError(
                f'Call to unknown function; There is no function named "{name}" (the devstack '
                f"evaluates {', '.join(sorted(FUNCTIONS))})."
            )
        try:
            return fn(*args)
        except ExprError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
            raise ExprError(
                f'Error in function call; Call to function "{name}" failed: {exc}.'
            ) from exc


def _interpolations(template: str) -> list[tuple[int, int]]:
    """(start, end) spans of the ``${...}`` interpolations of a template, escapes skipped."""
    spans = []
    i = 0
    while i < len(template):
        if template.startswith("$${", i):
            i += 3
            continue
        if template.startswith("${", i):
            depth, j, quote = 1, i + 2, False
            while j < len(template) and depth:
                ch = template[j]
                if quote:
                    if ch == "\\":
                        j += 1
                    elif ch == '"':
                        quote = False
                elif ch == '"':
                    quote = True
                elif ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                j += 1
            if depth:
                raise ExprError(
                    "Unterminated template string; No closing marker was found for the string."
                )
            spans.append((i, j))
            i = j
            continue
        i += 1
    return spans


_REFERS = re.compile(r"\b(?:var|local)\s*\.")


def _unescape(text: str) -> str:
    return text.replace("$${", "${").replace("%%{", "%{")


_HEREDOC = re.compile(
    r"<<(?P<dash>-?)(?P<marker>[A-Za-z_][A-Za-z0-9_]*)\n(?P<body>.*)\n[ \t]*(?P=marker)", re.S
)


def _dedent(text: str) -> str:
    lines = text.split("\n")
    indents = [len(x) - len(x.lstrip(" \t")) for x in lines if x.strip()]
    cut = min(indents, default=0)
    return "\n".join(x[cut:] for x in lines)


def render(template: str, scope: Scope) -> Any:
    """The value of a template: one interpolation alone keeps its type, else a string."""
    heredoc = _HEREDOC.fullmatch(template)
    if heredoc:
        template = heredoc.group("body") + "\n"
        if heredoc.group("dash"):
            template = _dedent(template)
    spans = _interpolations(template)
    if not spans:
        return _unescape(template)
    if len(spans) == 1 and spans[0] == (0, len(template)):
        return _interpolate(template, scope)
    out, last = [], 0
    for start, end in spans:
        out.append(_unescape(template[last:start]))
        value = _interpolate(template[start:end], scope)
        out.append(value if isinstance(value, str) and value.startswith("${") else _tostring(value))
        last = end
    out.append(_unescape(template[last:]))
    return "".join(out)


def _interpolate(chunk: str, scope: Scope) -> Any:
    """One ``${expr}``: its value, or the chunk itself when it is left for the client."""
    expr = chunk[2:-1]
    try:
        return evaluate(expr, scope)
    except _Unknown:
        if scope.refers(expr):
            raise ExprError(
                f"{_position(scope.source, re.escape(expr))}: Unsupported expression; the "
                f"devstack cannot evaluate ${{{expr}}} (it mixes var/local with a reference "
                "left for the client)."
            ) from None
        return chunk
    except ExprError as exc:
        if not scope.refers(expr) and not str(exc).startswith(FILENAME):
            return chunk  # not ours to evaluate: the client interpolates it
        raise


def evaluate(expr: str, scope: Scope) -> Any:
    return _Parser(expr, scope).parse()


def resolve(value: Any, scope: Scope) -> Any:
    """Every template in a decoded HCL tree evaluated (dict keys are left as written)."""
    if isinstance(value, str):
        return render(value, scope)
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if isinstance(value, dict):
        dynamic = value.get("dynamic")
        if not _is_dynamic(dynamic):
            return {k: resolve(v, scope) for k, v in value.items()}
        out = {k: resolve(v, scope) for k, v in value.items() if k != "dynamic"}
        for name, blocks in _expand_dynamic(dynamic if isinstance(dynamic, list) else [], scope):
            existing = out.get(name)
            out[name] = [*(existing if isinstance(existing, list) else []), *blocks]
        return out
    return value


def _is_dynamic(value: Any) -> bool:
    """``dynamic "<type>" { for_each, content }`` blocks as python-hcl2 hands them back."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(block, dict)
            and all(isinstance(spec, dict) and "content" in spec for spec in block.values())
            for block in value
        )
    )


def _expand_dynamic(blocks: list[dict[str, Any]], scope: Scope) -> list[tuple[str, list[Any]]]:
    """The blocks ``dynamic`` blocks generate: one per element of ``for_each``, labelled by
    ``labels`` and filled from ``content``, evaluated with the iterator (``<type>`` or
    ``iterator``) bound to each element's ``key`` and ``value``."""
    out = []
    for block in blocks:
        for name, spec in block.items():
            unknown = sorted(set(spec) - {"for_each", "labels", "iterator", "content"})
            if unknown:
                raise ExprError(
                    f'Unsupported argument; An argument named "{unknown[0]}" is not expected '
                    f'here (dynamic "{name}").'
                )
            if "for_each" not in spec:
                raise ExprError(
                    'Missing required argument; The argument "for_each" is required, but no '
                    f'definition was found (dynamic "{name}").'
                )
            collection = resolve(spec["for_each"], scope)
            if isinstance(collection, dict):
                items = sorted(collection.items())  # HCL iterates maps in key order
            elif isinstance(collection, list):
                items = list(enumerate(collection))
            else:
                raise ExprError(
                    "Invalid dynamic for_each value; Cannot use a "
                    f"{type(collection).__name__} value in for_each. An iterable collection is "
                    "required."
                )
            iterator = str(spec.get("iterator") or name).strip()
            if iterator.startswith("${") and iterator.endswith("}"):
                iterator = iterator[2:-1].strip()
            contents = spec["content"] if isinstance(spec["content"], list) else [spec["content"]]
            generated = []
            for key, item in items:
                child = scope.with_iterator(iterator, key, item)
                labels = resolve(spec.get("labels") or [], child)
                body = resolve(contents[-1] if contents else {}, child)
                for label in reversed(labels if isinstance(labels, list) else [labels]):
                    body = {_tostring(label): body}
                generated.append(body)
            out.append((name, generated))
    return out


# -- variables ---------------------------------------------------------------------------------


def _type_of(raw: Any) -> str | None:
    if raw is None:
        return None
    text = str(raw).strip()
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1].strip()
    return text.replace(" ", "")


def convert(value: Any, type_expr: str | None, name: str, how: str) -> Any:
    """``value`` as the variable's type; an HCL-worded error if it cannot be."""
    if type_expr in (None, "any"):
        return value
    try:
        return _convert(value, type_expr)
    except ExprError as exc:
        reason = str(exc).split("; ", 1)[-1].rstrip(".")
        if how == "default":
            raise ExprError(
                "Invalid default value for variable; This default value is not compatible with "
                f"the variable's type constraint: {reason}."
            ) from exc
        raise ExprError(
            f"Invalid value for variable; The value for {name} is not compatible with the "
            f"variable's type constraint: {reason}."
        ) from exc


def _convert(value: Any, type_expr: str) -> Any:
    if type_expr == "string":
        if isinstance(value, (list, dict)):
            raise ExprError("Invalid value; string required.")
        return None if value is None else _tostring(value)
    if type_expr == "number":
        return _tonumber(value)
    if type_expr == "bool":
        return _tobool(value)
    match = re.fullmatch(r"(list|set|map|tuple|object)\((.*)\)", type_expr)
    if not match:
        return value
    kind, inner = match.groups()
    if kind in ("list", "set"):
        if not isinstance(value, list):
            raise ExprError(f"Invalid value; {kind} of {inner} required.")
        return [_convert(v, inner) for v in value]
    if kind == "map":
        if not isinstance(value, dict):
            raise ExprError(f"Invalid value; map of {inner} required.")
        return {k: _convert(v, inner) for k, v in value.items()}
    return value


def declared_variables(tree: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """``{name: {"type": ..., "default": ..., "has_default": bool}}`` from the file's blocks."""
    out: dict[str, dict[str, Any]] = {}
    blocks = tree.get("variable", [])
    for block in blocks if isinstance(blocks, list) else [blocks]:
        for name, body in (block or {}).items():
            if name in out:
                where = _position(source, r"variable\s+\"" + re.escape(name) + '"')
                raise ExprError(
                    f"{where}: Duplicate variable; Duplicate {name} variable definition found."
                )
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
                raise ExprError(
                    "Invalid variable name; A name must start with a letter or underscore and "
                    "may contain only letters, digits, underscores, and dashes."
                )
            body = body if isinstance(body, dict) else {}
            unknown = sorted(set(body) - {"type", "default", "description", "validation"})
            if unknown:
                raise ExprError(
                    f'Unsupported argument; An argument named "{unknown[0]}" is not expected here.'
                )
            out[name] = {
                "type": _type_of(body.get("type")),
                "default": body.get("default"),
                "has_default": "default" in body,
                "validations": _validations(name, body.get("validation"), source),
            }
    plural = tree.get("variables", [])
    for block in plural if isinstance(plural, list) else [plural]:
        for name, default in (block or {}).items():
            out[name] = {
                "type": None,
                "default": default,
                "has_default": True,
                "validations": [],
            }
    return out


_SENTENCE = re.compile(r"^(?![a-z]).*[.?!]$", re.S)


def _validations(name: str, raw: Any, source: str) -> list[dict[str, Any]]:
    """A variable's ``validation`` blocks, checked as jobspec2 checks their form."""
    rules = []
    for i, block in enumerate(raw if isinstance(raw, list) else [raw] if raw else []):
        if not isinstance(block, dict):
            continue
        missing = [k for k in ("condition", "error_message") if k not in block]
        if missing:
            raise ExprError(
                f'Missing required argument; The argument "{missing[0]}" is required, but no '
                "definition was found."
            )
        condition = str(block["condition"])
        if not re.search(rf"\bvar\s*\.\s*{re.escape(name)}\b", condition):
            raise ExprError(
                f'Invalid variable validation condition; The condition for variable "{name}" '
                f"must refer to var.{name} in order to test incoming values."
            )
        message = block["error_message"]
        if not isinstance(message, str) or not message:
            raise ExprError(
                "Invalid validation error message; An empty string is not a valid nor useful "
                "error message."
            )
        if not _SENTENCE.match(message):
            raise ExprError(
                "Invalid validation error message; Validation error message must be at least "
                "one full sentence starting with an uppercase letter ( if the alphabet permits "
                "it ) and ending with a period or question mark."
            )
        block_at = [m.start() for m in re.finditer(rf'variable\s+"{re.escape(name)}"', source)]
        offset = block_at[0] if block_at else 0
        rule = [m.span() for m in re.finditer(r"\bvalidation\b", source[offset:])]
        where = "<nil>"
        if len(rule) > i:
            start = offset + rule[i][0]
            line = source.count("\n", 0, start) + 1
            col = start - (source.rfind("\n", 0, start) + 1) + 1
            where = f"{FILENAME}:{line},{col}-{col + len('validation')}"
        rules.append({"condition": condition, "message": message, "where": where})
    return rules


def _validate(name: str, value: Any, how: str, rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        result = render(rule["condition"], Scope("", {name: value}))
        if result is None:
            raise ExprError(
                "Invalid variable validation result; Validation condition expression must "
                "return either true or false, not null."
            )
        try:
            ok = _tobool(result)
        except ExprError as exc:
            raise ExprError(
                "Invalid variable validation result; Invalid validation condition result "
                "value: a bool is required."
            ) from exc
        if not ok:
            raise ExprError(
                f"Invalid value for {how} variable; {rule['message']}\n\nThis was checked by "
                f"the validation rule at {rule['where']}."
            )


def variable_values(decls: dict[str, dict[str, Any]], assigned: dict[str, Any]) -> dict[str, Any]:
    """Each declared variable's value: the assignment, else the default, else an error.

    The value used is checked against the variable's ``validation`` rules.
    """
    values: dict[str, Any] = {}
    for name, decl in decls.items():
        if name in assigned:
            values[name] = convert(assigned[name], decl["type"], name, "varfile")
            _validate(name, values[name], "varfile", decl["validations"])
        elif decl["has_default"]:
            values[name] = convert(decl["default"], decl["type"], name, "default")
            _validate(name, values[name], "default", decl["validations"])
        else:
            raise ExprError(
                f'<nil>: Unset variable "{name}"; A used variable must be set or have a '
                "default value; see https://www.nomadproject.io/docs/job-specification/hcl2/"
                "variables for details."
            )
    return values
