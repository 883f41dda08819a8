"""What the notifier would do with a simulation's changes: its own playbooks (plan_actions) and
its own decision step (service_layer/actions.decide_planned: the contact policy against its
stored consent, channels, time zone and contact ledger), read in the simulation's snapshot —
the code that creates actions, not a copy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_classifier.domain.model import Change
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.domain.playbooks import PlannedAction, Playbook, plan_actions
from tierflow_notifier.service_layer.actions import decide_planned
from tierflow_notifier.settings import NotifierSettings


class CarePreview:
    """Counts care actions; `bound(conn)` reads the notifier's tables through `conn`."""

    def __init__(self, playbook: Playbook, conn: AsyncConnection | None = None) -> None:
        self.playbook = playbook
        self._conn = conn

    def bound(self, conn: AsyncConnection) -> CarePreview:
        return CarePreview(self.playbook, conn)

    @classmethod
    def from_file(cls, path: Path | None = None) -> CarePreview:
        """The notifier's playbooks file (NOTIFIER_PLAYBOOKS_FILE, as the notifier reads it)."""
        return cls(load_playbook(path or NotifierSettings().playbooks_file))

    async def count(
        self, changes: Sequence[tuple[str, Change]], now: datetime
    ) -> tuple[Counter[str], Counter[str]]:
        """(actions created by playbook rule id, actions suppressed by reason); a deferred
        action counts as created: it goes out later."""
        assert self._conn is not None, "bind a connection first"
        conn = self._conn
        planned: list[PlannedAction] = []
        for change_id, change in changes:
            planned += plan_actions(
                self.playbook,
                trigger_event_id=change_id,
                dimension=change.dimension,
                from_label=change.from_label,
                to_label=change.to.label,
                change_reason=change.to.reason,
                customer_id=change.customer_id,
                explanation=change.to.explanation,
            )
        created: Counter[str] = Counter()
        suppressed: Counter[str] = Counter()
        unique = list({p.action_id: p for p in planned}.values())
        if not unique:
            return created, suppressed
        decided = await decide_planned(conn, self.playbook, unique, now)
        for p, decision in zip(decided.new, decided.decisions, strict=True):
            if decision.suppressed_reason is not None:
                suppressed[decision.suppressed_reason] += 1
            else:
                created[p.rule_id] += 1
        return created, suppressed
