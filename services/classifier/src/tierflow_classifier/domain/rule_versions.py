"""Rule sets as versioned data, pure: a version's id is its content's, what two versions differ
in, which dimensions a new version redefines, and which customers a partial rollout reaches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tierflow_classifier.domain.memo import once_per_object
from tierflow_classifier.domain.rules import Dimension, RuleSet

ID_PREFIX = "rs_"


def canonical(doc: Mapping[str, Any]) -> str:
    """One text per content: keys sorted, no whitespace, floats as Python prints them."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_id(doc: Mapping[str, Any]) -> str:
    """A rule set's version: 64 bits of the SHA-256 of its normalised content. The same rules
    written twice (other comments, layout, key order or label) have the same version; any change
    of a rule, param, timer, rate or setting gives another."""
    return ID_PREFIX + hashlib.sha256(canonical(doc).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Difference:
    """One place where two rule sets differ: its dotted path and both values (None: absent)."""

    path: str
    before: Any
    after: Any


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Difference]:
    """Where two normalised rule sets differ, param by param and rule by rule (a dimension's
    rules are compared by position: the first rule that matches wins, so order is content)."""
    out: list[Difference] = []
    _walk("", before, after, out)
    return out


def _walk(path: str, a: Any, b: Any, out: list[Difference]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            _walk(f"{path}.{key}" if path else str(key), a.get(key), b.get(key), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(f"{path}[{i}]", x, y, out)
    elif a != b:
        out.append(Difference(path, a, b))


@once_per_object
def definitions(rules: RuleSet) -> dict[str, str]:
    """Per dimension, a fingerprint of what decides its label: its rules in order, default,
    `label_from`, hysteresis, and the values of the params and the timers its rules read (and
    the params those timers read). Equal fingerprints in two versions: the dimension is defined
    the same way in both."""
    timers = {t.name: t for t in rules.timers}
    out: dict[str, str] = {}
    for dim in rules.dimensions:
        names = {n for r in dim.rules for n in r.inputs}
        read_timers = sorted(n for n in names if n in timers)
        timer_texts = {n: (timers[n].anchor, timers[n].days) for n in read_timers}
        timer_names: set[str] = set()
        for n in read_timers:
            timer_names |= set(timers[n].program.variables())
        params = {p: rules.params[p] for p in sorted((names | timer_names) & set(rules.params))}
        out[dim.name] = canonical(
            {
                "rules": [[r.label, r.when] for r in dim.rules],
                "default": dim.default,
                "label_from": dim.label_from,
                "hysteresis": _hysteresis(dim),
                "params": params,
                "timers": timer_texts,
            }
        )
    return out


def _hysteresis(dim: Dimension) -> list[float] | None:
    h = dim.hysteresis
    return None if h is None else [h.band, h.min_dwell_days]


def redefined(before: RuleSet | None, after: RuleSet) -> frozenset[str]:
    """The dimensions `after` defines otherwise than `before`. An unknown predecessor (None)
    redefines none: without knowing what changed, hysteresis keeps holding."""
    if before is None or before is after:
        return frozenset()
    old, new = definitions(before), definitions(after)
    return frozenset(name for name, text in new.items() if old.get(name) != text)


ROLLOUT_BUCKETS = 10_000


def rollout_bucket(customer_id: str) -> int:
    """A customer's stable place in [0, 10000): the same in every process and release."""
    digest = hashlib.blake2b(customer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % ROLLOUT_BUCKETS


def in_rollout(customer_id: str, percent: float) -> bool:
    """Whether a rollout to `percent` % of customers (hash of the id) includes this one. A
    customer in a smaller rollout of the same version is in every larger one."""
    return rollout_bucket(customer_id) < round(percent * ROLLOUT_BUCKETS / 100)


@dataclass(frozen=True)
class Candidate:
    """A rule set as submitted: its text, what it compiles to, and its normalised content."""

    body: str
    rules: RuleSet
    content: Mapping[str, Any]


@dataclass(frozen=True)
class StoredRuleSet:
    """A version as kept: its text as submitted, label, who made it and why, and status
    (active: in force, for all customers or for its share of a partial rollout; retired: was
    in force once; draft: never activated)."""

    version: str
    label: str
    body: str
    content: Mapping[str, Any]
    status: str
    created_at: datetime
    created_by: str
    note: str = ""


@dataclass(frozen=True)
class Activation:
    """The `activation`-th switch of rule set: `version` for `rollout_percent` % of customers,
    `previous` for the rest (None at 100 %)."""

    activation: int
    version: str
    previous: str | None
    rollout_percent: float
    activated_at: datetime
    activated_by: str
    note: str = ""

    @property
    def settled(self) -> str:
        """The version every customer is on once nothing is partially rolled out: what a new
        activation's customers outside its share keep."""
        return self.version if self.previous is None else self.previous


def next_activation(
    current: Activation | None,
    version: str,
    percent: float,
    *,
    at: datetime,
    by: str,
    note: str = "",
) -> Activation:
    """The activation that puts `version` in force for `percent` % of customers. Only one
    version is ever being rolled out: a new activation replaces a partial one, and the
    customers outside its share keep what they were on before that (rollback = activating
    that version)."""
    base = current.settled if current is not None else None
    full = percent >= 100 or base is None or base == version
    return Activation(
        activation=(current.activation if current is not None else 0) + 1,
        version=version,
        previous=None if full else base,
        rollout_percent=100.0 if full else percent,
        activated_at=at,
        activated_by=by,
        note=note,
    )
