"""What the classifier prunes (tierflow_common/db/pruning.py runs it): change history older
than CLASSIFIER_CHANGE_RETENTION_DAYS, by when it was recorded (the wall clock: it bounds disk,
in replay mode too). The event-id ledger drops whole weeks on its own (ledger_partitions.py)."""

from __future__ import annotations

from datetime import timedelta

from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.db.pruning import PruneRule

# A history row holds a record's changes (one or more): the count is of changes, what the
# history shows, so it is at least the rows taken, and a full batch of rows goes on.
_PRUNE_HISTORY = (
    "WITH gone AS (DELETE FROM classification_records WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM classification_records WHERE recorded_at < $1 LIMIT $2 "
    "FOR UPDATE SKIP LOCKED)) RETURNING jsonb_array_length(changes) AS n) "
    "SELECT coalesce(sum(n), 0) AS classification_changes FROM gone"
)


def retention_rules(settings: ClassifierSettings) -> list[PruneRule]:
    return [
        PruneRule(
            "change history",
            timedelta(days=settings.change_retention_days),
            _PRUNE_HISTORY,
            drives="classification_changes",
        )
    ]
