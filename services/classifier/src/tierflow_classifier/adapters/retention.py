"""What the classifier prunes (tierflow_common/db/pruning.py runs it): change history older
than CLASSIFIER_CHANGE_RETENTION_DAYS, by when it was recorded (the wall clock: it bounds disk,
in replay mode too). The event-id ledger drops whole weeks on its own (ledger_partitions.py)."""

from __future__ import annotations

from datetime import timedelta

from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.db.pruning import PruneRule, ctid_batch


def retention_rules(settings: ClassifierSettings) -> list[PruneRule]:
    return [
        PruneRule(
            "change history",
            timedelta(days=settings.change_retention_days),
            # A history row holds a record's changes (one or more): they are counted, what the
            # history shows, so the count is at least the rows taken and a full batch goes on.
            ctid_batch(
                "classification_records",
                "recorded_at",
                each="jsonb_array_length(changes)",
                counted_as="classification_changes",
            ),
            drives="classification_changes",
        )
    ]
