"""What the notifier prunes (tierflow_common/db/pruning.py runs it).

- Care actions older than NOTIFIER_ACTION_RETENTION_DAYS that are finished — done, suppressed,
  cancelled (its deliveries were cancelled with it), or a customer-facing message (coupon, care
  message: nobody acknowledges those) whose deliveries all went through — with their
  deliveries. Never an action with a delivery still pending or dead (an operator may retry
  it), never a task still open or acknowledged.
- Contact-ledger entries older than NOTIFIER_CONTACT_LEDGER_RETENTION_DAYS (by their contact
  time): at least the widest cap window, or a cap could be exceeded (checked at start-up).
"""

from __future__ import annotations

from datetime import timedelta

from tierflow_common.db.pruning import PruneRule, ctid_batch
from tierflow_notifier.domain.playbooks import CUSTOMER_FACING, Playbook
from tierflow_notifier.settings import NotifierSettings

_FINISHED_ACTIONS = """
WITH doomed AS (
  SELECT a.action_id FROM care_actions AS a
  WHERE a.created_at < $1
    AND (a.status IN ('done', 'suppressed', 'cancelled')
         OR (a.status IN ('open', 'acked') AND a.kind = ANY($3::text[])))
    AND NOT EXISTS (SELECT 1 FROM care_deliveries AS d
                    WHERE d.action_id = a.action_id AND d.state NOT IN ('delivered', 'cancelled'))
  LIMIT $2 FOR UPDATE OF a SKIP LOCKED
), deliveries AS (
  DELETE FROM care_deliveries AS d USING doomed WHERE d.action_id = doomed.action_id
  RETURNING 1
), actions AS (
  DELETE FROM care_actions AS a USING doomed WHERE a.action_id = doomed.action_id RETURNING 1
)
SELECT (SELECT count(*) FROM actions) AS care_actions,
       (SELECT count(*) FROM deliveries) AS care_deliveries
"""


class RetentionTooShort(ValueError):
    pass


def retention_rules(settings: NotifierSettings, playbook: Playbook) -> list[PruneRule]:
    ledger = timedelta(days=settings.contact_ledger_retention_days)
    widest = max((cap.window for cap in playbook.policy.caps), default=timedelta(0))
    if ledger < widest:
        raise RetentionTooShort(
            f"NOTIFIER_CONTACT_LEDGER_RETENTION_DAYS={settings.contact_ledger_retention_days} "
            f"is shorter than the widest contact cap window ({widest.days} days) of "
            f"{settings.playbooks_file}: the caps count those entries"
        )
    return [
        PruneRule(
            "finished care actions",
            timedelta(days=settings.action_retention_days),
            _FINISHED_ACTIONS,
            drives="care_actions",
            params=(sorted(CUSTOMER_FACING),),
        ),
        PruneRule(
            "contact ledger", ledger, ctid_batch("contact_ledger", "at"), drives="contact_ledger"
        ),
    ]
