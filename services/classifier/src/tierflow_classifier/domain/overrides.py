"""Manual overrides: an operator pins one dimension of a customer to a label until a deadline.

An override is stored as the dimension's assignment itself (rule `override`, reason
`override`, the override in its explanation), so the customer's row, its history and the API
need nothing new. While it holds, `classify` leaves the dimension alone and counts its expiry
among the customer's review deadlines: the review scheduler judges the customer again at that
instant and the rules take the dimension back (cause `override_expired:<override_id>`). A
clearing ends it at once (cause `override_cleared:<override_id>`). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tierflow_classifier.domain.model import Assignment, Override
from tierflow_classifier.domain.rules import RuleSet

OVERRIDE = "override"  # the rule and the reason of an overridden dimension's assignment


@dataclass(frozen=True)
class Hold:
    """The override an assignment carries."""

    override_id: str
    label: str
    reason: str
    by: str
    expires_at: datetime | None
    cleared: bool = False

    def holds_at(self, at: datetime) -> bool:
        return not self.cleared and (self.expires_at is None or at < self.expires_at)

    @property
    def released_cause(self) -> str:
        """The cause of the change that gives the dimension back to its rules."""
        kind = "override_cleared" if self.cleared else "override_expired"
        return f"{kind}:{self.override_id}"


def hold_of(assignment: Assignment | None) -> Hold | None:
    """The override an assignment is, or None for a rule's assignment."""
    if assignment is None or assignment.rule != OVERRIDE:
        return None
    o: Mapping[str, Any] = assignment.explanation.get(OVERRIDE, {})
    expires = o.get("expires_at")
    return Hold(
        override_id=str(o.get("override_id", "")),
        label=assignment.label,
        reason=str(o.get("reason", "")),
        by=str(o.get("by", "")),
        expires_at=datetime.fromisoformat(expires) if expires else None,
        cleared="cleared_at" in o,
    )


def pinned(override: Override, at: datetime, rule_set_version: str) -> Assignment:
    """The assignment an override puts on its dimension at `at`."""
    assert override.label is not None
    return Assignment(
        label=override.label,
        since=at,
        rule=OVERRIDE,
        reason=OVERRIDE,
        explanation={
            OVERRIDE: {
                "override_id": override.override_id,
                "label": override.label,
                "reason": override.reason,
                "by": override.by,
                "expires_at": override.expires_at.isoformat() if override.expires_at else None,
            }
        },
        rule_set_version=rule_set_version,
    )


def cleared(assignment: Assignment, at: datetime, by: str) -> Assignment:
    """The override assignment, marked as ended at `at` by `by` (classify then releases it)."""
    o = dict(assignment.explanation.get(OVERRIDE, {}))
    o.update(cleared_at=at.isoformat(), cleared_by=by)
    return Assignment(
        label=assignment.label,
        since=assignment.since,
        rule=assignment.rule,
        reason=assignment.reason,
        explanation={**assignment.explanation, OVERRIDE: o},
        rule_set_version=assignment.rule_set_version,
    )


def allowed_labels(rules: RuleSet, dimension: str) -> frozenset[str] | None:
    """The labels a dimension of `rules` can hold (its rules' and its default); None when it
    takes its label from a feature (any label then)."""
    dim = next((d for d in rules.dimensions if d.name == dimension), None)
    if dim is None:
        return frozenset()
    if dim.label_from is not None:
        return None
    return frozenset({*(r.label for r in dim.rules), dim.default})


def override_problem(rules: RuleSet, dimension: str, label: str | None) -> tuple[str, str] | None:
    """(field, reason) when `rules` cannot take this override, else None."""
    if not any(d.name == dimension for d in rules.dimensions):
        names = ", ".join(d.name for d in rules.dimensions)
        return "dimension", f"unknown dimension {dimension!r} (one of {names})"
    labels = allowed_labels(rules, dimension)
    if label is not None and labels is not None and label not in labels:
        known = ", ".join(sorted(labels))
        return "label", f"{label!r} is not a label of {dimension} (one of {known})"
    return None
