"""Erasure in the classifier's use cases (on the in-memory unit of work) and its pure rules: a
batch with a `customer.erased` event does what its records did one by one; the erased
customer's old events never come back; a later event starts a new customer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tests.fakes import FakeDatabase
from tests.support import ROOT
from tests.unit.test_reclassify_service import consume, event, purchase, record, wired
from tierflow_classifier.domain.erasure import boundary
from tierflow_common.contract import CUSTOMER_ERASED_TYPE, EmittedEvent
from tierflow_common.erasure import is_erased
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.domain.playbooks import FirstPurchaseTrigger, action_id_for
from tierflow_notifier.domain.schedules import CustomerFacts, fire, first_purchase_entry

T0 = datetime(2026, 3, 1, tzinfo=UTC)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(instants, st.none() | instants)
def test_the_boundary_covers_the_request_and_every_event_already_applied(
    requested: datetime, latest: datetime | None
) -> None:
    b = boundary(requested, latest)
    assert b >= requested
    assert latest is None or b >= latest
    assert b in (requested, latest)


@given(instants, instants)
def test_an_event_is_the_erased_customers_exactly_when_dated_through_the_boundary(
    through: datetime, at: datetime
) -> None:
    assert is_erased({"c": through}, "c", at) == (at <= through)
    assert not is_erased({"c": through}, "other", at)


def erased(event_id: str, customer: str, time: datetime) -> EmittedEvent:
    return event(event_id, customer, "customer.erased", time)


async def test_a_batch_with_an_erasure_does_what_its_records_did_one_by_one() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    batch = [
        purchase("p1", "ann", "700", T0),
        purchase("b1", "bob", "20", T0),
        erased("x1", "ann", T0 + timedelta(hours=1)),
        purchase("p0", "ann", "900", T0 - timedelta(days=3)),  # the erased customer's
        purchase("p2", "ann", "15", T0 + timedelta(hours=2)),  # a new customer's
    ]
    outcome = await consume(wiring, db, [record(e, i) for i, e in enumerate(batch)])
    assert outcome.duplicates == 1  # p0: dropped, never applied
    ann = db.customers["ann"]
    assert ann.purchases_lifetime == 1
    assert str(ann.net_spend_lifetime.normalize()) == "15"
    assert db.customers["bob"].purchases_lifetime == 1
    assert {k[1] for k in db.ledger} == {"b1", "p2"}
    assert all(c.customer_id != "ann" or c.cause == "event:shop/p2" for c in db.history.values())
    records = [item for _, item in db.outbox if isinstance(item, EmittedEvent)]
    types = [(r.subject, r.type) for r in records if r.subject == "ann"]
    # ann's first changes, the erasure, then the new customer's first changes, in that order.
    at = types.index(("ann", CUSTOMER_ERASED_TYPE))
    assert 0 < at < len(types) - 1
    erasure = records[[r.type for r in records].index(CUSTOMER_ERASED_TYPE)]
    assert erasure.data["cause"] == "event:shop/x1"
    assert erasure.data["erased_through"] == "2026-03-01T01:00:00Z"


async def test_the_erased_customers_old_events_resent_later_change_nothing() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    history = [purchase("p1", "ann", "700", T0), purchase("p2", "ann", "30", T0 + timedelta(1))]
    await consume(wiring, db, [record(e, i) for i, e in enumerate(history)])
    # Erased through a time before its latest event: the latest event is the boundary.
    await consume(wiring, db, [record(erased("x1", "ann", T0), 2)])
    assert "ann" not in db.customers
    assert db.erased["ann"] == T0 + timedelta(days=1)
    outcome = await consume(wiring, db, [record(e, 3 + i) for i, e in enumerate(history)])
    assert outcome.duplicates == 2
    assert "ann" not in db.customers
    assert not db.ledger
    # Erasing again is harmless: nothing left, the boundary never moves back.
    await consume(wiring, db, [record(erased("x1", "ann", T0), 5)])
    assert db.erased["ann"] == T0 + timedelta(days=1)


PLAYBOOK = load_playbook(ROOT / "config" / "notifier.yaml")


def test_a_customer_after_an_erased_one_gets_scheduled_actions_of_their_own_ids() -> None:
    (rule,) = PLAYBOOK.scheduled(FirstPurchaseTrigger)
    entry = first_purchase_entry(rule, "ann", T0)
    first, _ = fire(entry, rule, CustomerFacts(), T0 + timedelta(days=30))
    again, _ = fire(entry, rule, CustomerFacts(generation="2026-02-01T00:00:00Z"), T0)
    assert first is not None
    assert again is not None
    # A customer never erased keeps the ids it always had; the next one under the id does not
    # share them (nor the webhook-ids receivers dedupe by).
    assert first.action_id == action_id_for("first_purchase:ann", rule.id)
    assert again.action_id != first.action_id
