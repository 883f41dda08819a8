"""A fast path for the simple CEL expressions rule sets are made of, as Python closures.

Building a CEL activation (converting ~40 variables into CEL values) and calling into it is
the classifier's largest per-event cost. Most rules are comparisons of named features and
params joined by `&&` / `||` / `!`, with a little double arithmetic; for exactly that subset
this module parses the expression itself (a small recursive-descent parser over a whitelist of
tokens — nothing is ever passed to `eval`) and builds a closure over the variables mapping.

The subset is typed like CEL: arithmetic only on two doubles, comparisons between numbers
(int and double mix, as in CEL), strings or booleans, logic only on booleans. Anything else —
function calls, member access, `in`, ternaries, int arithmetic, escapes in strings — is not
compiled (`compile_fast` returns None) and the rule keeps its CEL program. rules_file.py also
checks each closure against CEL on a sample customer, and a property test compares both on
random inputs.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
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


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _divide(a: float, b: float) -> float:
    """IEEE 754 division, as CEL's double division (no exception on zero)."""
    if b != 0.0:
        return a / b
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}

_Node = tuple[Fast, str]  # closure and its CEL type: int, double, string, bool


class _Parser:
    def __init__(self, source: str, types: Mapping[str, str]) -> None:
        self.tokens = _tokens(source)
        self.i = 0
        self.types = types

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
            f, t = self.unary()
            if t != "bool":
                raise Unsupported("! on a non-bool")
            return (lambda v: not f(v)), "bool"
        if self.peek() == "-":
            self.take()
            f, t = self.unary()
            if t != "double":
                raise Unsupported("negation of a non-double")
            return (lambda v: -f(v)), "double"
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
                value_i = int(text)
                return (lambda v: value_i), "int"
            value_f = float(text)
            return (lambda v: value_f), "double"
        if kind == "str":
            value_s = text[1:-1]
            return (lambda v: value_s), "string"
        if kind == "name":
            if text in ("true", "false"):
                value_b = text == "true"
                return (lambda v: value_b), "bool"
            if text in _RESERVED or text not in self.types:
                raise Unsupported(text)
            if self.peek() in ("(", "."):
                raise Unsupported("call or member access")
            name = text
            return (lambda v: v[name]), self.types[name]
        raise Unsupported(text)


def _logic(left: _Node, right: _Node, op: str) -> _Node:
    (lf, lt), (rf, rt) = left, right
    if lt != "bool" or rt != "bool":
        raise Unsupported(f"{op} on non-bools")
    if op == "&&":
        return (lambda v: lf(v) and rf(v)), "bool"
    return (lambda v: lf(v) or rf(v)), "bool"


def _compare(left: _Node, right: _Node, op: str) -> _Node:
    (lf, lt), (rf, rt) = left, right
    numeric = {"int", "double"}
    if not (lt == rt or (lt in numeric and rt in numeric)):
        raise Unsupported(f"{lt} {op} {rt}")
    if lt == "bool" and op not in ("==", "!="):
        raise Unsupported("ordering of bools")
    cmp = _CMP[op]
    return (lambda v: cmp(lf(v), rf(v))), "bool"


def _arith(left: _Node, right: _Node, op: str) -> _Node:
    (lf, lt), (rf, rt) = left, right
    if lt != "double" or rt != "double":
        raise Unsupported(f"{lt} {op} {rt}")  # CEL: no int/double mixing; int maths differs
    fn = _ARITH[op]
    return (lambda v: fn(lf(v), rf(v))), "double"


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


def compile_fast(source: str, types: Mapping[str, str], result: str) -> Fast | None:
    """A closure computing `source` over a variables mapping, or None outside the subset.

    `types`: the CEL type of each variable (as the classifier passes them); `result`: the
    type the expression must have (bool for rules, double for timers)."""
    try:
        fn, t = _Parser(source, types).parse()
    except Unsupported:
        return None
    return fn if t == result else None


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
