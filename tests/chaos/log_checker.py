"""A log checker in the spirit of Jepsen's Kafka workload: reads the change topics itself (not
through any tierflow consumer) and flags, per customer and dimension, what an exactly-once
pipeline must never publish.

- conflicting: one change id twice with different content;
- duplicate change: the same change (customer, dimension, cause, from, to) under two ids;
- reordered: a change whose `from` is not the previous change's `to`, while the change that
  would fit comes later in the log;
- gap: the same break with no change anywhere that would close it (a change was lost); the
  first change of a key must be a first assignment (`from` null, or the dimension's default
  label where its first assignment is not published).

The same id with the same content twice is a redelivery (the outbox relay publishes at least
once; consumers dedupe by id): counted, not a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tierflow_common.contract.events import (
    CLASSIFICATION_CHANGED_TYPE,
    CLASSIFICATIONS_CHANGED_TYPE,
    TIER_CHANGED_TYPE,
    ClassificationChangedData,
    ClassificationsChangedData,
)

Key = tuple[str, str]  # (customer, dimension)


@dataclass(frozen=True)
class LoggedChange:
    change_id: str
    customer_id: str
    dimension: str
    from_label: str | None
    to_label: str
    cause: str

    @property
    def key(self) -> Key:
        return (self.customer_id, self.dimension)

    @property
    def content(self) -> tuple[str, str, str, str | None, str]:
        return (self.customer_id, self.dimension, self.cause, self.from_label, self.to_label)


@dataclass
class LogVerdict:
    records: int = 0
    redelivered: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    duplicate_changes: list[tuple[str, str]] = field(default_factory=list)
    reordered: list[Key] = field(default_factory=list)
    gaps: list[Key] = field(default_factory=list)
    chains: dict[Key, list[str]] = field(default_factory=dict)  # labels in log order
    breaks: dict[Key, str] = field(default_factory=dict)  # where a reordered/gapped chain broke

    @property
    def ok(self) -> bool:
        return not (self.conflicting or self.duplicate_changes or self.reordered or self.gaps)

    def summary(self) -> str:
        return (
            f"{self.records} changes: conflicting={self.conflicting[:5]} "
            f"duplicate_changes={self.duplicate_changes[:5]} reordered={self.reordered[:5]} "
            f"gaps={self.gaps[:5]} redelivered={len(self.redelivered)} "
            f"breaks={list(self.breaks.values())[:3]}"
        )


def check(
    changes: Iterable[LoggedChange], silent_defaults: Mapping[str, str] | None = None
) -> LogVerdict:
    """Judge changes given in log order (per key: the order of its partition).
    `silent_defaults`: dimension -> the default label whose first assignment is not published
    (a key's chain may start from it as well as from null)."""
    silent = silent_defaults or {}
    verdict = LogVerdict()
    by_id: dict[str, LoggedChange] = {}
    by_content: dict[tuple[str, str, str, str | None, str], str] = {}
    chains: dict[Key, list[LoggedChange]] = {}
    for change in changes:
        verdict.records += 1
        first = by_id.get(change.change_id)
        if first is not None:
            if first == change:
                verdict.redelivered.append(change.change_id)
            else:
                verdict.conflicting.append(change.change_id)
            continue
        by_id[change.change_id] = change
        other = by_content.setdefault(change.content, change.change_id)
        if other != change.change_id:
            verdict.duplicate_changes.append((other, change.change_id))
            continue
        chains.setdefault(change.key, []).append(change)
    for key, chain in chains.items():
        verdict.chains[key] = [c.to_label for c in chain]
        previous: str | None = None
        for i, change in enumerate(chain):
            if i == 0 and change.from_label is not None and silent.get(key[1]) == change.from_label:
                previous = change.from_label  # its unpublished first assignment
            if change.from_label != previous:
                later = chain[i + 1 :]
                fits = any(c.from_label == previous for c in later)
                (verdict.reordered if fits else verdict.gaps).append(key)
                verdict.breaks[key] = (
                    f"change {i} ({change.change_id}, {change.cause}) moves from "
                    f"{change.from_label!r}, the one before it to {previous!r}"
                )
                break
            previous = change.to_label
    return verdict


def from_records(records: Sequence[dict[str, Any]]) -> list[LoggedChange]:
    """Changes of `customer-classification-changed` (v1 and v2) or `customer-tier-changed`
    records as tests.support.read_to_end returns them (CloudEvent attributes and `value`)."""
    out: list[LoggedChange] = []
    for r in records:
        if r.get("type") == CLASSIFICATIONS_CHANGED_TYPE:
            data = ClassificationsChangedData.model_validate(orjson.loads(r["value"]))
            out += [
                LoggedChange(
                    c.change_id, data.customer_id, c.dimension, c.from_label, c.to_label, data.cause
                )
                for c in data.changes
            ]
        elif r.get("type") in (CLASSIFICATION_CHANGED_TYPE, TIER_CHANGED_TYPE):
            one = ClassificationChangedData.model_validate(orjson.loads(r["value"]))
            out.append(
                LoggedChange(
                    r["id"], one.customer_id, one.dimension, one.from_label, one.to_label, one.cause
                )
            )
    return out
