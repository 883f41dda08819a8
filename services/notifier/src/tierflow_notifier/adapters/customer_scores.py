"""The latest scores the notifier knows per customer (churn probability, CLV, value at risk),
kept beside its contact row (migration 0018_care_loop) from the last classification change
that carried any: scheduled actions (cadence, follow-up, SLA, holiday, survey) take them, so
they rank in the queue like the change-triggered ones."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.raw import raw_connection
from tierflow_notifier.domain.queue import Scores

_NOTE_SCORES = (
    "INSERT INTO notifier_contacts AS c"
    " (customer_id, churn_probability, clv, value_at_risk, scores_at)"
    " SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[],"
    " $5::timestamptz[])"
    " ON CONFLICT (customer_id) DO UPDATE SET churn_probability = EXCLUDED.churn_probability,"
    " clv = EXCLUDED.clv, value_at_risk = EXCLUDED.value_at_risk,"
    " scores_at = EXCLUDED.scores_at, updated_at = now()"
    " WHERE c.scores_at IS NULL OR c.scores_at <= EXCLUDED.scores_at"
)


async def note_scores(conn: AsyncConnection, scores: Mapping[str, tuple[Scores, datetime]]) -> None:
    """Keep each customer's latest scores (by the change's effective time; a replayed older
    change does not overwrite them): scheduled actions carry them (`scores`)."""
    if not scores:
        return
    ordered = sorted(scores.items())  # the same lock order in every process
    raw = await raw_connection(conn)
    await raw.execute(
        _NOTE_SCORES,
        [c for c, _ in ordered],
        [s.churn_probability for _, (s, _) in ordered],
        [s.clv for _, (s, _) in ordered],
        [s.value_at_risk for _, (s, _) in ordered],
        [at for _, (_, at) in ordered],
    )


def scores(row: Mapping[str, Any] | None) -> Scores | None:
    """The latest scores a contact row holds (None: never scored)."""
    if row is None:
        return None
    return Scores.of(row.get("churn_probability"), row.get("clv"), row.get("value_at_risk"))
