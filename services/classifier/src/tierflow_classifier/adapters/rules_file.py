"""Reads the classifier's YAML rule set, compiles its CEL expressions and checks every one
against the feature vocabulary, so a bad rule fails start-up with file, line and reason."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import cel
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tierflow_classifier.domain.apply import VALUE_TIER
from tierflow_classifier.domain.churn_features import UNSCORED
from tierflow_classifier.domain.classify import variables_at
from tierflow_classifier.domain.fastrules import cel_type, compile_fast, compile_first_match
from tierflow_classifier.domain.features import compute_features
from tierflow_classifier.domain.model import CustomerState
from tierflow_classifier.domain.rule_versions import Candidate, content_id
from tierflow_classifier.domain.rules import (
    ANCHORS,
    Dimension,
    Hysteresis,
    RefundPolicy,
    Rule,
    RuleSet,
    Timer,
)
from tierflow_common.config_file import ConfigProblems, Problem, parse_yaml_model, position_of
from tierflow_common.exceptions import ConfigError

_Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
_Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[str, Field(min_length=1)]
    when: Annotated[str, Field(min_length=1)]


class _Hysteresis(BaseModel):
    model_config = ConfigDict(extra="forbid")
    band: float = Field(default=0.0, ge=0, lt=1)
    min_dwell_days: float = Field(default=0.0, ge=0)


class _Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[_Rule] = Field(default_factory=list)
    default: Annotated[str, Field(min_length=1)]
    label_from: str | None = None
    hysteresis: _Hysteresis | None = None

    @model_validator(mode="after")
    def _rules_or_feature(self) -> _Dimension:
        if bool(self.rules) == bool(self.label_from):
            raise ValueError("give either `rules` or `label_from`")
        labels = [r.label for r in self.rules]
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique within a dimension, got {labels}")
        return self


class _Timer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: str
    days: Annotated[str, Field(min_length=1)]

    @field_validator("anchor")
    @classmethod
    def _known_anchor(cls, value: str) -> str:
        if value not in ANCHORS:
            raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}")
        return value


class _Region(BaseModel):
    model_config = ConfigDict(extra="forbid")
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    province: str = ""
    city: str = ""


class _Refunds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unknown_order: Literal["accept", "dead_letter"] = "accept"
    over_refund: Literal["accept", "dead_letter"] = "dead_letter"


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refunds: _Refunds = Field(default_factory=_Refunds)
    rule_set_version: Annotated[str, Field(min_length=1)]
    base_currency: _Currency
    rates: dict[_Currency, Decimal]
    window_months: int = Field(default=12, ge=1, le=120)
    home_region: _Region
    params: dict[_Name, float | str | bool] = Field(default_factory=dict)
    timers: dict[_Name, _Timer] = Field(default_factory=dict)
    dimensions: dict[_Name, _Dimension]

    @field_validator("rates")
    @classmethod
    def _positive(cls, rates: dict[str, Decimal]) -> dict[str, Decimal]:
        bad = [c for c, r in rates.items() if r <= 0]
        if bad:
            raise ValueError(f"rates must be positive: {', '.join(bad)}")
        return rates

    @model_validator(mode="after")
    def _consistent(self) -> _RulesFile:
        if self.rates.get(self.base_currency) != Decimal(1):
            raise ValueError(f"rates must map the base currency {self.base_currency} to 1")
        if VALUE_TIER not in self.dimensions:
            raise ValueError(f"the {VALUE_TIER!r} dimension is required (customer-tier-changed)")
        return self


def _params(raw: _RulesFile) -> dict[str, Any]:
    params: dict[str, Any] = {
        k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        for k, v in raw.params.items()
    }
    params.update(
        home_country=raw.home_region.country,
        home_province=raw.home_region.province,
        home_city=raw.home_region.city,
        window_months=float(raw.window_months),
    )
    return params


class _Compiler:
    def __init__(self, origin: str, root: yaml.Node | None, known: set[str]) -> None:
        self.origin, self.root, self.known = origin, root, known

    def fail(self, loc: tuple[str | int, ...], message: str) -> ConfigProblems:
        line, column = position_of(self.root, loc)
        dotted = ".".join(str(p) for p in loc)
        return ConfigProblems(
            self.origin,
            [Problem(line, column, dotted, message)],
            f"{self.origin}:{line or '?'}: {dotted}: {message}",
        )

    def compile(self, source: str, loc: tuple[str | int, ...]) -> tuple[Any, tuple[str, ...]]:
        try:
            program = cel.compile(source)
        except ValueError as exc:
            raise self.fail(loc, f"invalid CEL: {str(exc).splitlines()[0]}") from exc
        names = tuple(program.variables())
        unknown = sorted(set(names) - self.known)
        if unknown:
            raise self.fail(loc, f"unknown name(s) {', '.join(unknown)}")
        return program, names


def load_rules(path: Path) -> RuleSet:
    """The rule set in a file (the shipped default, tests, scripts)."""
    return rule_set_candidate(path).rules


def parse_rules(text: str, origin: str = "rules") -> RuleSet:
    """A rule set from its YAML text, compiled and checked against the feature vocabulary;
    ConfigProblems names line, column and problem. Its version is the id of its content
    (domain/rule_versions.py); the document's `rule_set_version` is its human label."""
    return _compiled(*parse_yaml_model(text, origin, _RulesFile), origin)


def _compiled(raw: _RulesFile, root: yaml.Node | None, origin: str) -> RuleSet:
    params = _params(raw)
    sample = CustomerState(customer_id="sample")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    features = {**compute_features(sample, epoch, params), **UNSCORED}
    known = set(params) | set(features) | set(raw.timers)
    compiler = _Compiler(origin, root, known)
    timers = []
    needed: set[str] = set()
    for name, t in raw.timers.items():
        program, names = compiler.compile(t.days, ("timers", name, "days"))
        timers.append(Timer(name, t.anchor, t.days, program))
        needed.update(names)
    dimensions = []
    for name, d in raw.dimensions.items():
        if d.label_from is not None and d.label_from not in features:
            raise compiler.fail(("dimensions", name, "label_from"), "not a feature name")
        rules = []
        for i, r in enumerate(d.rules):
            program, names = compiler.compile(r.when, ("dimensions", name, "rules", i, "when"))
            rules.append(Rule(r.label, r.when, program, names))
            needed.update(names)
        hysteresis = (
            Hysteresis(d.hysteresis.band, d.hysteresis.min_dwell_days) if d.hysteresis else None
        )
        dimensions.append(Dimension(name, tuple(rules), d.default, d.label_from, hysteresis))
    rule_set = RuleSet(
        version=content_id(normalised(raw)),
        label=raw.rule_set_version,
        base_currency=raw.base_currency,
        rates=dict(raw.rates),
        params=params,
        dimensions=tuple(dimensions),
        timers=tuple(timers),
        window_months=raw.window_months,
        needed=frozenset(needed - set(raw.timers)),
        refunds=RefundPolicy(raw.refunds.unknown_order, raw.refunds.over_refund),
    )
    _type_check(rule_set, compiler, sample, epoch)
    return with_fast_paths(rule_set, sample, epoch)


def normalised(raw: _RulesFile) -> dict[str, Any]:
    """The content of a rule-set document, without its label, comments or layout: numbers as
    the classifier reads them (params as doubles, rates as exact decimals)."""
    doc = raw.model_dump(mode="python", exclude={"rule_set_version"})
    doc["rates"] = {c: _decimal_text(r) for c, r in raw.rates.items()}
    doc["params"] = {
        k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        for k, v in raw.params.items()
    }
    return doc


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def candidate(text: str, origin: str = "rules") -> Candidate:
    """A submitted rule set: compiled (ConfigProblems when it does not), with its content."""
    raw, root = parse_yaml_model(text, origin, _RulesFile)
    return Candidate(body=text, rules=_compiled(raw, root, origin), content=normalised(raw))


def rule_set_candidate(path: Path) -> Candidate:
    """The rule-set file as a candidate (it seeds an empty database)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return candidate(text, str(path))


def normalised_text(text: str, origin: str = "rules") -> dict[str, Any]:
    """normalised() of a document's text (no compiling: for diffs of stored versions)."""
    return normalised(parse_yaml_model(text, origin, _RulesFile)[0])


def with_fast_paths(rules: RuleSet, sample: CustomerState, at: datetime) -> RuleSet:
    """Attach a Python function to every rule and timer in the simple subset (fastrules.py),
    typed by the variables the classifier passes, and kept only if it agrees with CEL on the
    sample customer; and to a dimension whose rules all have one, their chain in one call."""
    variables, _, context = variables_at(sample, rules, at)
    types = {k: t for k, v in variables.items() if (t := cel_type(v)) is not None}
    types.update({t.name: "bool" for t in rules.timers})

    def agrees(fast: Any, program: Any) -> bool:
        try:
            return bool(fast(variables) == program.execute(context))
        except Exception:
            return False

    timers = []
    for timer in rules.timers:
        fast = compile_fast(timer.days, types, "double")
        ok = fast is not None and agrees(fast, timer.program)
        timers.append(replace(timer, fast=fast if ok else None))
    dimensions = []
    for dim in rules.dimensions:
        compiled = []
        for rule in dim.rules:
            fast = compile_fast(rule.when, types, "bool")
            ok = fast is not None and agrees(fast, rule.program)
            compiled.append(replace(rule, fast=fast if ok else None))
        first = (
            compile_first_match([r.when for r in compiled], types)
            if all(r.fast is not None for r in compiled)
            else None
        )
        dimensions.append(replace(dim, rules=tuple(compiled), first_match=first))
    return replace(rules, timers=tuple(timers), dimensions=tuple(dimensions))


def _type_check(rules: RuleSet, compiler: _Compiler, sample: CustomerState, at: datetime) -> None:
    """Run every expression once on a sample customer: CEL does not coerce types, so a rule like
    `x * 2 > y` (int times double) must fail here, not on the first real event."""
    for timer in rules.timers:
        try:
            value = timer.program.execute(
                dict(rules.params) | compute_features(sample, at, rules.params)
            )
        except Exception as exc:
            raise compiler.fail(("timers", timer.name, "days"), str(exc).split(".")[0]) from exc
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise compiler.fail(("timers", timer.name, "days"), "must evaluate to a number")
    _, _, context = variables_at(sample, rules, at)
    for dim in rules.dimensions:
        for i, rule in enumerate(dim.rules):
            loc: tuple[str | int, ...] = ("dimensions", dim.name, "rules", i, "when")
            try:
                value = rule.program.execute(context)
            except Exception as exc:
                raise compiler.fail(loc, str(exc).split(". ")[0]) from exc
            if not isinstance(value, bool):
                raise compiler.fail(loc, f"must evaluate to true or false, got {value!r}")
