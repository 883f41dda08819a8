"""The rules' Python fast path computes exactly what CEL computes, and stays out of the way of
expressions it does not cover."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cel
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.fastrules import compile_fast, compile_first_match

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "classifier.yaml")
EXPRESSIONS = [(r.when, r.program, r.fast) for d in RULES.dimensions for r in d.rules] + [
    (t.days, t.program, t.fast) for t in RULES.timers
]
STRINGS = ["", "A", "B", "C", "CN", "US", "Zhejiang", "low", "high"]
NUMBER = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 1.5, 1000.0, 5000.0, 1e9]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)


def sample_types() -> dict[str, str]:
    names: dict[str, str] = {}
    for _, program, _ in EXPRESSIONS:
        for name in program.variables():
            names[name] = "double"
    for name in ("abc_class", "churn_level", "country", "province", "home_country"):
        names[name] = "string"
    names["home_province"] = "string"
    for timer in RULES.timers:
        names[timer.name] = "bool"
    return names


TYPES = sample_types()


@st.composite
def variable_sets(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind in TYPES.items():
        if kind == "double":
            out[name] = draw(NUMBER)
        elif kind == "string":
            out[name] = draw(st.sampled_from(STRINGS))
        else:
            out[name] = draw(st.booleans())
    return out


def test_every_expression_of_the_default_rule_set_has_a_fast_path() -> None:
    assert all(fast is not None for _, _, fast in EXPRESSIONS)


@settings(max_examples=300, deadline=None)
@given(variable_sets())
def test_fast_path_equals_cel_on_random_inputs(variables: dict[str, Any]) -> None:
    context = cel.Context(variables=variables)
    for source, program, fast in EXPRESSIONS:
        assert fast is not None
        want, got = program.execute(context), fast(variables)
        assert type(got) is type(want) or {type(got), type(want)} <= {int, float}, source
        assert got == want or (math.isnan(got) and math.isnan(want)), source


def test_every_dimension_of_the_default_rule_set_is_one_call() -> None:
    assert all(d.first_match is not None for d in RULES.dimensions if d.label_from is None)


@settings(max_examples=300, deadline=None)
@given(variable_sets())
def test_a_dimension_in_one_call_picks_the_rule_cel_picks(variables: dict[str, Any]) -> None:
    context = cel.Context(variables=variables)
    for dim in RULES.dimensions:
        if dim.label_from is not None:
            continue
        assert dim.first_match is not None
        want = next((i for i, r in enumerate(dim.rules) if r.program.execute(context)), -1)
        assert dim.first_match(variables) == want, dim.name


def test_a_chain_with_one_rule_outside_the_subset_is_not_compiled() -> None:
    types = {"x": "double", "s": "string"}
    assert compile_first_match(["x > 1.0", "size(s) > 0"], types) is None
    chain = compile_first_match(["x > 2.0", "x > 1.0 && s == 'a'"], types)
    assert chain is not None
    assert [chain({"x": x, "s": s}) for x, s in ((3.0, ""), (1.5, "a"), (1.5, "b"))] == [0, 1, -1]
    assert compile_first_match([], types) is not None


def test_the_translation_holds_no_character_of_the_rule() -> None:
    # A string literal that is Python code stays a value: compared, never run.
    source = 's == \'__import__("os").system("false")\''
    fast = compile_fast(source, {"s": "string"}, "bool")
    assert fast is not None
    assert fast({"s": "x"}) is False
    assert fast({"s": '__import__("os").system("false")'}) is True
    # The compiled code names only the constants held apart; the literal is not in it.
    assert all(name.startswith("_k") for name in fast.__code__.co_names)
    assert "__import__" not in repr(fast.__code__.co_consts)


def test_outside_the_subset_there_is_no_fast_path() -> None:
    types = {"x": "double", "s": "string", "b": "bool", "n": "int"}
    for source in (
        "x * 2 > 1.0",  # CEL has no int x double arithmetic: CEL must report it
        "size(s) > 0",  # function calls
        "s in ['a']",  # lists and `in`
        "b ? x : 1.0",  # ternaries
        "n / 2 > 1",  # int division truncates
        "s.startsWith('a')",  # member calls
        "x > 1.0 > 0.0",  # chained comparisons
        "'a\\\\b' == s",  # escapes
        "x >= y",  # unknown name
        "x + 1.0",  # a number where a bool is needed
    ):
        assert compile_fast(source, types, "bool") is None, source


def test_double_division_by_zero_is_ieee_as_in_cel() -> None:
    fast = compile_fast("x / y", {"x": "double", "y": "double"}, "double")
    assert fast is not None
    program = cel.compile("x / y")
    for x in (1.0, -1.0, 0.0):
        variables = {"x": x, "y": 0.0}
        want, got = program.execute(variables), fast(variables)
        assert got == want or (math.isnan(got) and math.isnan(want))
