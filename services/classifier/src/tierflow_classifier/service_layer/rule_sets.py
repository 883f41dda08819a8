"""Rule sets as versioned data: keep a version, activate one, follow what is in force.

Every use case runs inside the caller's `async with uow:`. The classifier's processes follow
the latest activation (RuleSetFollower) and put it in force between two batches; customers are
then re-judged by the review scheduler's throttled pass (reclassification.TimePassed: cause
`rule_set_activated:<version>/<activation>`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from tierflow_classifier.domain.rule_versions import (
    Activation,
    Candidate,
    StoredRuleSet,
    next_activation,
)
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.exceptions import ActiveRuleSetMoved, UnknownRuleSet
from tierflow_classifier.service_layer.reclassify import Classifier
from tierflow_classifier.service_layer.unit_of_work import UnitOfWork
from tierflow_common.transient import is_transient

log = structlog.get_logger(__name__)

# Compiles a stored version's text (adapters/rules_file.parse_rules).
Compile = Callable[[str, str], RuleSet]


async def keep(uow: UnitOfWork, candidate: Candidate, *, by: str, note: str = "") -> StoredRuleSet:
    """Store a version as a draft (an activation makes it active); the stored one when its
    content is stored already (same content, same version: the first text, author and note
    are kept)."""
    stored = StoredRuleSet(
        version=candidate.rules.version,
        label=candidate.rules.label,
        body=candidate.body,
        content=candidate.content,
        status="draft",
        created_at=datetime.now(UTC),
        created_by=by,
        note=note,
    )
    if await uow.rule_sets.add(stored):
        return stored
    existing = await uow.rule_sets.get(stored.version)
    assert existing is not None
    return existing


async def seed(uow: UnitOfWork, candidate: Candidate, *, origin: str) -> Activation:
    """The activation in force; on a database that has none, the file's rule set becomes
    activation 1. After that the database decides: a file that differs is kept as a draft
    (and said so), to simulate and activate like any other candidate."""
    current = await uow.rule_sets.current()
    if current is not None:
        if candidate.rules.version not in (current.version, current.previous):
            stored = await keep(uow, candidate, by=f"file:{origin}", note="rule-set file at start")
            log.warning(
                "rule_set_file_not_in_force",
                file=origin,
                file_version=candidate.rules.version,
                file_status=stored.status,
                active_version=current.version,
                hint="the database's active rule set is in force; simulate and activate the "
                "file's version to use it (tierflow rules simulate / activate)",
            )
        return current
    await keep(uow, candidate, by=f"file:{origin}", note="seeded from the rule-set file")
    first = next_activation(
        None,
        candidate.rules.version,
        100.0,
        at=datetime.now(UTC),
        by=f"file:{origin}",
        note="seeded from the rule-set file",
    )
    if not await uow.rule_sets.activate(first):  # another process seeded it just now
        current = await uow.rule_sets.current()
        assert current is not None
        return current
    return first


async def activate(
    uow: UnitOfWork,
    version: str,
    *,
    expected_active: str,
    rollout_percent: float,
    by: str,
    note: str = "",
) -> Activation:
    """Put a stored version in force for `rollout_percent` % of customers. Raises
    UnknownRuleSet, or ActiveRuleSetMoved when the version in force is not `expected_active`
    (also when another activation commits first)."""
    if await uow.rule_sets.get(version) is None:
        raise UnknownRuleSet(version)
    current = await uow.rule_sets.current()
    active = current.version if current is not None else None
    if active != expected_active:
        raise ActiveRuleSetMoved(expected_active, active)
    activation = next_activation(
        current, version, rollout_percent, at=datetime.now(UTC), by=by, note=note
    )
    if not await uow.rule_sets.activate(activation):
        now = await uow.rule_sets.current()
        raise ActiveRuleSetMoved(expected_active, now.version if now is not None else None)
    log.info(
        "rule_set_activated",
        activation=activation.activation,
        version=version,
        previous=activation.previous,
        rollout_percent=activation.rollout_percent,
        by=by,
    )
    return activation


async def compiled(
    uow: UnitOfWork, version: str, compile_rules: Compile, known: dict[str, RuleSet]
) -> RuleSet:
    """A stored version compiled (once per process: `known` keeps them)."""
    rules = known.get(version)
    if rules is not None:
        return rules
    stored = await uow.rule_sets.get(version)
    if stored is None:
        raise UnknownRuleSet(version)
    rules = compile_rules(stored.body, f"rule set {version}")
    if rules.version != version:  # the compiler's normalisation changed since it was stored
        log.warning("rule_set_recompiled_version", stored=version, compiled=rules.version)
        rules = replace(rules, version=version)
    known[version] = rules
    return rules


class RuleSetFollower:
    """Keeps this process on the activation in force: reads the latest every `poll_s`
    seconds and puts a new one in force (between two batches of the consumer)."""

    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        classifier: Classifier,
        compile_rules: Compile,
        *,
        poll_s: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._uow = unit_of_work
        self._classifier = classifier
        self._compile = compile_rules
        self._poll_s = poll_s
        self._on_change = on_change
        self._stopping = asyncio.Event()
        self.activation: int = classifier.activation

    def stop(self) -> None:
        self._stopping.set()

    async def follow(self) -> bool:
        """Put the latest activation in force if it is new; whether it was."""
        async with self._uow() as uow:
            current = await uow.rule_sets.current()
            if current is None or current.activation == self.activation:
                return False
            known = self._classifier.known
            rules = await compiled(uow, current.version, self._compile, known)
            previous = (
                await compiled(uow, current.previous, self._compile, known)
                if current.previous is not None
                else None
            )
        self._classifier.put_in_force(rules, previous, current.rollout_percent, current.activation)
        self.activation = current.activation
        log.info(
            "rule_set_in_force",
            activation=current.activation,
            version=rules.version,
            label=rules.label,
            previous=current.previous,
            rollout_percent=current.rollout_percent,
        )
        if self._on_change is not None:
            self._on_change()
        return True

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.follow()
            except Exception as exc:
                if is_transient(exc):
                    log.warning("rule_set_follow_retry", error=str(exc))
                else:
                    log.exception("rule_set_follow_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll_s)
