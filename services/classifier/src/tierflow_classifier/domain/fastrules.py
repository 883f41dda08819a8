"""A fast path for the simple CEL expressions rule sets are made of, as Python functions.

Building a CEL activation (converting ~40 variables into CEL values) and calling into it is
the classifier's largest per-event cost. Most rules are comparisons of named features and
params joined by `&&` / `||` / `!`, with a little double arithmetic; for exactly that subset
this module parses the expression itself (a small recursive-descent parser over a whitelist of
tokens) and translates it into one Python function over the variables mapping.

What is compiled is never the rule's text: the translation is made only of fixed operator
spellings, `v[...]` lookups and references to constants held apart (`_k0`, `_k1`, ...: every
literal and variable name, as a value), so no character of the rule reaches the compiler, and
the function runs with no builtins. One function instead of a tree of closures: a rule costs
one call, not one per operand and operator (with a dimension's rules in one function too, the
classifier's batch path without SQL went from 358 to 289 µs CPU per event; docs/benchmarks.md).

The subset is typed like CEL: arithmetic only on two doubles, comparisons between numbers
(int and double mix, as in CEL), strings or booleans, logic only on booleans. Anything else —
function calls, member access, `in`, ternaries, int arithmetic, escapes in strings — is not
compiled (`compile_fast` returns None) and the rule keeps its CEL program. rules_file.py also
checks each function against CEL on a sample customer, and a property test compares both on
random inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Fast = Callable[[Mapping[str, Any]], Any]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)"
    r"|(?P<str>'[^'\\]*'|\"[^\"\\]*\")"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[<>!+\-*/()]))"
)
_RESERVED = {"null", "in", "as", "break", "const", "continue", "else", "for", "function", "if"}


class Unsupported(Exception):
    """Outside the subset: keep the CEL program."""


def _tokens(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    source = source.rstrip()
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None or m.end() == pos:
            raise Unsupported(source[pos:])
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# The comparison operators, spelled alike in CEL and Python.
_CMP = frozenset({"==", "!=", "<", "<=", ">", ">="})


def _divide(a: float, b: float) -> float:
    """IEEE 754 division, as CEL's double division (no exception on zero)."""
    if b != 0.0:
        return a / b
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


# The Python spelling of the other operators ("/" goes through _divide).
_ARITH_PY = {"+": "+", "-": "-", "*": "*"}
_LOGIC = {"&&": "and", "||": "or"}

# A translated expression: Python source over `v` (the variables) and the constants `_k<i>`,
# and its CEL type (int, double, string, bool).
_Node = tuple[str, str]


class _Parser:
    def __init__(
        self, source: str, types: Mapping[str, str], constants: list[Any] | None = None
    ) -> None:
        """`constants`: a list shared with the parsers of other expressions compiled into the
        same function (one numbering for all of them)."""
        self.tokens = _tokens(source)
        self.i = 0
        self.types = types
        self.constants: list[Any] = [] if constants is None else constants

    def constant(self, value: Any) -> str:
        """The name the translation refers to `value` by (the value itself stays out of it)."""
        self.constants.append(value)
        return f"_k{len(self.constants) - 1}"

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise Unsupported("unexpected end")
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> _Node:
        node = self.or_()
        if self.i != len(self.tokens):
            raise Unsupported(f"unexpected {self.peek()!r}")
        return node

    def or_(self) -> _Node:
        left = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            left = _logic(left, right, "||")
        return left

    def and_(self) -> _Node:
        left = self.rel()
        while self.peek() == "&&":
            self.take()
            right = self.rel()
            left = _logic(left, right, "&&")
        return left

    def rel(self) -> _Node:
        left = self.add()
        op = self.peek()
        if op in _CMP:
            self.take()
            right = self.add()
            left = _compare(left, right, op)
            if self.peek() in _CMP:
                raise Unsupported("chained comparison")
        return left

    def add(self) -> _Node:
        left = self.mul()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            left = _arith(left, self.mul(), op)
        return left

    def mul(self) -> _Node:
        left = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            left = _arith(left, self.unary(), op)
        return left

    def unary(self) -> _Node:
        if self.peek() == "!":
            self.take()
            code, t = self.unary()
            if t != "bool":
                raise Unsupported("! on a non-bool")
            return f"(not {code})", "bool"
        if self.peek() == "-":
            self.take()
            code, t = self.unary()
            if t != "double":
                raise Unsupported("negation of a non-double")
            return f"(-{code})", "double"
        return self.primary()

    def primary(self) -> _Node:
        kind, text = self.take()
        if kind == "op" and text == "(":
            node = self.or_()
            if self.take()[1] != ")":
                raise Unsupported("unbalanced parentheses")
            return node
        if kind == "num":
            if re.fullmatch(r"\d+", text):
                return self.constant(int(text)), "int"
            return self.constant(float(text)), "double"
        if kind == "str":
            return self.constant(text[1:-1]), "string"
        if kind == "name":
            if text in ("true", "false"):
                return self.constant(text == "true"), "bool"
            if text in _RESERVED or text not in self.types:
                raise Unsupported(text)
            if self.peek() in ("(", "."):
                raise Unsupported("call or member access")
            return f"v[{self.constant(text)}]", self.types[text]
        raise Unsupported(text)


def _logic(left: _Node, right: _Node, op: str) -> _Node:
    (lc, lt), (rc, rt) = left, right
    if lt != "bool" or rt != "bool":
        raise Unsupported(f"{op} on non-bools")
    return f"({lc} {_LOGIC[op]} {rc})", "bool"


def _compare(left: _Node, right: _Node, op: str) -> _Node:
    (lc, lt), (rc, rt) = left, right
    numeric = {"int", "double"}
    if not (lt == rt or (lt in numeric and rt in numeric)):
        raise Unsupported(f"{lt} {op} {rt}")
    if lt == "bool" and op not in ("==", "!="):
        raise Unsupported("ordering of bools")
    return f"({lc} {op} {rc})", "bool"


def _arith(left: _Node, right: _Node, op: str) -> _Node:
    (lc, lt), (rc, rt) = left, right
    if lt != "double" or rt != "double":
        raise Unsupported(f"{lt} {op} {rt}")  # CEL: no int/double mixing; int maths differs
    if op == "/":
        return f"_divide({lc}, {rc})", "double"
    return f"({lc} {_ARITH_PY[op]} {rc})", "double"


def cel_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return "double"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    return None


def compile_first_match(sources: Sequence[str], types: Mapping[str, str]) -> Fast | None:
    """One function giving the index of the first of `sources` (bool expressions) that holds,
    or -1 when none does: a dimension's rules in one call. None unless every one is in the
    subset."""
    constants: list[Any] = []
    tests: list[str] = []
    try:
        for source in sources:
            code, t = _Parser(source, types, constants).parse()
            if t != "bool":
                return None
            tests.append(code)
    except Unsupported:
        return None
    chain = "".join(f"{i} if {code} else " for i, code in enumerate(tests))
    return _compiled(f"{chain}-1", constants)


def _compiled(code: str, constants: Sequence[Any]) -> Fast | None:
    """`lambda v: <code>` with the constants `_k<i>` and nothing else in scope (no builtins)."""
    scope: dict[str, Any] = {"__builtins__": {}, "_divide": _divide}
    scope.update((f"_k{i}", value) for i, value in enumerate(constants))
    try:
        fn: Fast = eval(compile(f"lambda v: {code}", "<rule>", "eval"), scope)  # noqa: S307
    except (RecursionError, MemoryError, SyntaxError):  # nesting deeper than Python compiles
        return None
    return fn


def compile_fast(source: str, types: Mapping[str, str], result: str) -> Fast | None:
    """A function computing `source` over a variables mapping, or None outside the subset.

    `types`: the CEL type of each variable (as the classifier passes them); `result`: the
    type the expression must have (bool for rules, double for timers)."""
    try:
        parser = _Parser(source, types)
        code, t = parser.parse()
    except Unsupported:
        return None
    if t != result:
        return None
    return _compiled(code, parser.constants)


def compared_with(source: str, name: str) -> list[str] | None:
    """What `name` is compared with in `source`: the other operand (a variable name or a number
    literal) of every comparison it is an operand of, when it appears nowhere else (no
    arithmetic on it, no call, no parentheses around it); otherwise None."""
    try:
        tokens = [text for _, text in _tokens(source)]
    except Unsupported:
        return None
    arithmetic = {"+", "-", "*", "/", "!", "(", ")"}
    operands: list[str] = []
    for i, text in enumerate(tokens):
        if text != name:
            continue
        before = tokens[i - 1] if i > 0 else None
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if after in _CMP and before not in arithmetic and before not in _CMP:
            other = tokens[i + 2] if i + 2 < len(tokens) else None
            beyond = tokens[i + 3] if i + 3 < len(tokens) else None
        elif before in _CMP and after not in arithmetic and after not in _CMP:
            other = tokens[i - 2] if i >= 2 else None
            beyond = tokens[i - 3] if i >= 3 else None
        else:
            return None
        if other is None or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|\d+(\.\d*)?", other):
            return None
        if beyond in arithmetic or beyond in _CMP:
            return None
        operands.append(other)
    return operands
