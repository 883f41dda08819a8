"""Table definitions (SQLAlchemy Core). Alembic migrations create them; code reads them here.

One metadata for the one database the pipeline uses; each table says which service owns it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

# Shared plumbing --------------------------------------------------------------------------

# A consumer group's position, written in the same transaction as the state it produced.
consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("group_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Bumped by every claim at assignment; a write must carry it (tierflow_common/fencing.py).
    Column("owner_epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("owner", Text, nullable=True),
    PrimaryKeyConstraint("group_id", "topic", "partition"),
)

# Transactional outbox: records to publish, written with the state change that caused them;
# one row per enqueue, its records in order as one MessagePack array (tierflow_common/outbox.py,
# migration 0023).
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("producer", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("records", LargeBinary, nullable=False),
    Column("record_count", Integer, nullable=False),
    Index("ix_outbox_producer_id", "producer", "id"),
)

# Erased customers, per service that erased its records (tierflow_common/erasure.py): an event
# for one of them dated at or before `erased_through` belongs to the erased customer and is
# dropped on arrival (a replay cannot bring it back); a later one starts a new customer. The
# id is kept only as its SHA-256; `seq` grows with every erasure (caches of a service watch it).
customer_erasures = Table(
    "customer_erasures",
    metadata,
    Column("service", Text, nullable=False),
    Column("customer_key", LargeBinary, nullable=False),
    Column("erased_through", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column(
        "seq", BigInteger, nullable=False, server_default=text("nextval('customer_erasures_seq')")
    ),
    PrimaryKeyConstraint("service", "customer_key"),
    Index("ix_customer_erasures_seq", "service", "seq"),
)

# Ingest -----------------------------------------------------------------------------------

# API keys are stored as SHA-256 of a 256-bit random secret: a slow KDF adds nothing for
# keys with that much entropy, and a fast lookup keeps authentication off the hot path.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("key_hash", LargeBinary, nullable=False, unique=True),
    Column("sources", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # tierflow_common.auth.Role values (migration 0010; keys made before it are ingest keys).
    Column("roles", ARRAY(Text), nullable=False, server_default=text("'{ingest}'")),
)

# Every call of an operate/admin route of any service (tierflow_common.audit), denied and failed
# ones included. `target` holds the route's path parameters (action id, delivery id, ...).
audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("service", Text, nullable=False),
    Column("key_id", Text, nullable=True),
    Column("key_name", Text, nullable=True),
    Column("role", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("route", Text, nullable=False),
    Column("target", JSONB, nullable=False),
    Column("status", Integer, nullable=False),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_key_id", "key_id", "audit_id"),
)

# One row per (source, id) the broker acknowledged: lets the ingest report resends as duplicates.
# Partitioned by week of the event's own time (the same on a resend), kept for
# INGEST_RECEIPT_RETENTION_DAYS (migration 0008, db/ledger_partitions.py).
ingest_receipts = Table(
    "ingest_receipts",
    metadata,
    Column("source", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("source", "event_id", "event_time"),
    postgresql_partition_by="RANGE (event_time)",
)

# Classifier -------------------------------------------------------------------------------

# The event-id ledger: one row per applied event; its primary key makes application at-most-once.
# Partitioned by week of the event's own time (the same on every resend, so the key still
# catches it), kept for CLASSIFIER_LEDGER_RETENTION_DAYS (migration 0008,
# db/ledger_partitions.py); beyond that, purchases and refunds are known by their order id.
processed_events = Table(
    "processed_events",
    metadata,
    Column("source", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("source", "event_id", "event_time"),
    # Erasure finds a customer's entries (migration 0011).
    Index("ix_processed_events_customer", "customer_id"),
    postgresql_partition_by="RANGE (event_time)",
)

customers = Table(
    "customers",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("purchases_lifetime", BigInteger, nullable=False),
    Column("net_spend_lifetime", Numeric(30, 6), nullable=False),
    Column("first_purchase_at", DateTime(timezone=True), nullable=True),
    Column("last_purchase_at", DateTime(timezone=True), nullable=True),
    Column("refunds_lifetime", BigInteger, nullable=False, server_default="0"),
    Column("refunded_lifetime", Numeric(30, 6), nullable=False, server_default="0"),
    Column("value_tier", Text, nullable=False),
    Column("dimensions", JSONB, nullable=False),
    Column("features", JSONB, nullable=False, server_default="{}"),
    Column("profile", JSONB, nullable=False, server_default="{}"),
    Column("first_seen_at", DateTime(timezone=True), nullable=True),
    Column("recent_purchases", ARRAY(DateTime(timezone=True)), nullable=False, server_default="{}"),
    Column("next_review_at", DateTime(timezone=True), nullable=True),
    Column("rule_set_version", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # P(churn) as of the last classification, NULL where not scored (migration 0012).
    Column("churn_probability", Float, nullable=True),
    # The console's customer search by range (migration 0012).
    Index("ix_customers_net_spend", "net_spend_lifetime"),
    # With the customer id after it: most customers share a purchase count (migration 0022).
    Index("ix_customers_purchases", "purchases_lifetime", "customer_id"),
    Index("ix_customers_last_purchase", "last_purchase_at"),
    Index(
        "ix_customers_churn",
        "churn_probability",
        postgresql_where=text("churn_probability IS NOT NULL"),
    ),
)

# Current label per (customer, dimension): segment membership and distributions by index.
customer_labels = Table(
    "customer_labels",
    metadata,
    Column("customer_id", Text, nullable=False),
    Column("dimension", Text, nullable=False),
    Column("label", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("customer_id", "dimension"),
    Index("ix_customer_labels_segment", "dimension", "label", "customer_id"),
)

# Customers per label per dimension every CLASSIFIER_DISTRIBUTION_SNAPSHOT_S, written by the
# elected classifier process (GET /v1/stats/distribution/history).
distribution_snapshots = Table(
    "distribution_snapshots",
    metadata,
    Column("at", DateTime(timezone=True), primary_key=True),
    Column("dimensions", JSONB, nullable=False),
)

# Replay mode's clock: the highest event time applied so far.
classifier_clock = Table(
    "classifier_clock",
    metadata,
    Column("name", Text, primary_key=True),
    # NULL: assigned to a consumer but no event applied yet (holds a replay's watermark back).
    Column("watermark", DateTime(timezone=True), nullable=True),
)

# Change history, one row per record: a cause's changes to one customer at one instant, in
# the shape of a `customer-classification-changed` record's `changes` (migration 0020).
classification_records = Table(
    "classification_records",
    metadata,
    Column("record_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("cause", Text, nullable=False),
    Column("effective_at", DateTime(timezone=True), nullable=False),
    Column("changes", JSONB, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_change_records_customer_cause", "customer_id", "cause"),
    # Retention prunes by age; rows arrive in recorded_at order, so a BRIN index is enough.
    Index("ix_change_records_recorded_at_brin", "recorded_at", postgresql_using="brin"),
)

# A view (migration 0020): classification_records expanded to one row per dimension change,
# what the history and as-of queries read. Written through classification_records only.
classification_changes = Table(
    "classification_changes",
    metadata,
    Column("change_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("dimension", Text, nullable=False),
    Column("from_label", Text, nullable=True),
    Column("to_label", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("explanation", JSONB, nullable=False),
    Column("cause", Text, nullable=False),
    Column("effective_at", DateTime(timezone=True), nullable=False),
    Column("rule_set_version", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

# RFM / ABC population statistics: derived cut points and the KLL sketches they came from.
population_stats = Table(
    "population_stats",
    metadata,
    Column("name", Text, primary_key=True),
    Column("payload", JSONB, nullable=False),
    Column("recency", LargeBinary, nullable=False),
    Column("frequency", LargeBinary, nullable=False),
    Column("monetary", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Fitted churn models; the classifier scores with the one marked current.
churn_models = Table(
    "churn_models",
    metadata,
    Column("version", Text, primary_key=True),
    Column("fitted_at", DateTime(timezone=True), nullable=False),
    Column("data_as_of", DateTime(timezone=True), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("summary", JSONB, nullable=False),
    Column("is_current", Boolean, nullable=False, server_default="false"),
)

# Rule sets as versioned data: every version the classifier was given (its id derived from its
# content), and every activation (the latest is in force).
rule_sets = Table(
    "rule_sets",
    metadata,
    Column("version", Text, primary_key=True),
    Column("label", Text, nullable=False),
    Column("body", Text, nullable=False),  # the YAML as submitted
    Column("content", JSONB, nullable=False),  # normalised: what the version id is taken of
    Column("status", Text, nullable=False),  # active, retired, draft
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
)

rule_set_activations = Table(
    "rule_set_activations",
    metadata,
    Column("activation", Integer, primary_key=True),  # 1, 2, ...: a gap-free sequence
    Column("version", Text, nullable=False),
    # During a partial rollout, what the customers outside it keep.
    Column("previous", Text, nullable=True),
    Column("rollout_percent", Numeric, nullable=False),
    Column("activated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("activated_by", Text, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
)

# Notifier ---------------------------------------------------------------------------------

# open/acked before the rest, then critical, service, marketing (migration 0013).
QUEUE_RANK_SQL = (
    "(CASE WHEN status IN ('open', 'acked') THEN 0 ELSE 3 END"
    " + CASE priority_class WHEN 'critical' THEN 0 WHEN 'service' THEN 1 ELSE 2 END)"
)

# status: open -> acked -> done, or suppressed (never delivered; suppressed_reason says why),
# or cancelled by an operator (never delivered after that).
care_actions = Table(
    "care_actions",
    metadata,
    Column("action_id", Text, primary_key=True),
    Column("trigger_event_id", Text, nullable=False),
    Column("rule_id", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="open"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("priority_class", Text, nullable=False, server_default="service"),
    Column("owner", Text, nullable=True),
    Column("channel", Text, nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("deliver_at", DateTime(timezone=True), nullable=True),
    Column("explanation", JSONB, nullable=False, server_default="{}"),
    Column("details", JSONB, nullable=False, server_default="{}"),
    Column("suppressed_reason", Text, nullable=True),
    Column("acked_at", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("outcome", Text, nullable=True),
    # The customer's scores on the classification change that caused it (null otherwise);
    # reassignment and cancellation by an operator (migration 0013).
    Column("churn_probability", Float, nullable=True),
    Column("clv", Float, nullable=True),
    Column("value_at_risk", Float, nullable=True),
    Column("owner_note", Text, nullable=True),
    Column("reassigned_at", DateTime(timezone=True), nullable=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
    Column("cancel_reason", Text, nullable=True),
    # The trace of the change that caused it, sent with its deliveries (migration 0016).
    Column("trace_context", JSONB, nullable=True),
    # The queue order as one ascending keyset (tierflow_notifier.domain.queue.queue_key).
    Column("queue_rank", SmallInteger, Computed(QUEUE_RANK_SQL, persisted=True)),
    Column(
        "queue_risk",
        Float,
        Computed("COALESCE(-value_at_risk, 'Infinity'::double precision)", persisted=True),
    ),
    Column(
        "queue_due",
        DateTime(timezone=True),
        Computed("COALESCE(due_at, 'infinity'::timestamptz)", persisted=True),
    ),
    # Exactly one action per (trigger, rule), whatever redelivery or rebalancing does.
    UniqueConstraint("trigger_event_id", "rule_id", name="uq_care_actions_trigger_rule"),
    Index("ix_care_actions_customer", "customer_id", "created_at"),
    Index("ix_care_actions_status_created", "status", "created_at"),
    Index("ix_care_actions_queue", "queue_rank", "queue_risk", "queue_due", "action_id"),
)

# What the notifier knows about a customer's reachability, projected from customer-events and
# classification changes; the notifier never reads the classifier's tables.
notifier_contacts = Table(
    "notifier_contacts",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("timezone", Text, nullable=True),
    Column("birthday", Date, nullable=True),
    Column("preferred_channel", Text, nullable=True),
    Column("marketing_consent", Boolean, nullable=True),
    Column("channel_consent", JSONB, nullable=False, server_default="{}"),
    Column("labels", JSONB, nullable=False, server_default="{}"),
    Column("first_purchase_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The latest scores a classification change carried (migration 0018): scheduled actions
    # take them; scores_at is that change's effective time (an older change never overwrites).
    Column("churn_probability", Float, nullable=True),
    Column("clv", Float, nullable=True),
    Column("value_at_risk", Float, nullable=True),
    Column("scores_at", DateTime(timezone=True), nullable=True),
)

notifier_complaints = Table(
    "notifier_complaints",
    metadata,
    Column("customer_id", Text, nullable=False),
    Column("complaint_id", Text, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("customer_id", "complaint_id"),
)

# Durable due times: one row per pending (customer, scheduled rule[, complaint]); the scheduler
# fires due rows with FOR UPDATE SKIP LOCKED, so restarts and several processes are safe.
notifier_schedules = Table(
    "notifier_schedules",
    metadata,
    Column("schedule_id", Text, primary_key=True),
    Column("rule_id", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("anchor_at", DateTime(timezone=True), nullable=False),
    Column("period", Integer, nullable=False, server_default="1"),
    Column("ref", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_notifier_schedules_due", "due_at"),
    Index("ix_notifier_schedules_customer", "customer_id"),
)

# The contact-pressure ledger: one row per action that reaches (or occupies) a customer, across
# every playbook and channel; caps count these rows.
contact_ledger = Table(
    "contact_ledger",
    metadata,
    Column("action_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("priority_class", Text, nullable=False),
    Column("channel", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_contact_ledger_customer_at", "customer_id", "at"),
    Index("ix_contact_ledger_at_brin", "at", postgresql_using="brin"),
)

# One row per (action, endpoint): pending -> delivered, or dead after N attempts (operator retry
# puts it back to pending). The lease keeps two workers from sending the same row at once; the
# pages keep room for it (fill factor 50, migration 0019), so leasing writes no index entry.
care_deliveries = Table(
    "care_deliveries",
    metadata,
    Column("delivery_id", Text, primary_key=True),
    Column("action_id", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("action_id", "endpoint", name="uq_care_deliveries_action_endpoint"),
    Index(
        "ix_care_deliveries_pending",
        "endpoint",
        "next_attempt_at",
        postgresql_where=text("state = 'pending'"),
    ),
    Index("ix_care_deliveries_state", "state", "delivery_id"),
    # Leasing reads due rows most urgent first (migration 0006).
    Index(
        "ix_care_deliveries_claim",
        "endpoint",
        "priority",
        "next_attempt_at",
        postgresql_where=text("state = 'pending'"),
    ),
    postgresql_with={"fillfactor": 50},
)
