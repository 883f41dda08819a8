"""Distinct events, distinct ids (CloudEvents: `source` + `id` identify one event): over any
sequence of publishing rounds — the same cause moving a customer again at the same instant,
a redelivered cause — no two different records of the classifier's topics share a `source` +
`id`, and the same changes always get the same ids (stable across redelivery). The derivation
is documented in docs/cloudevents.md."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_change_payload import changes
from tierflow_classifier.domain.change_ids import change_id, new_changes
from tierflow_classifier.domain.model import Assignment, Change
from tierflow_classifier.service_layer.reclassify import change_records
from tierflow_common.contract import EmittedEvent
from tierflow_common.erasure import erased_event
from tierflow_common.settings import TopicSettings
from tierflow_notifier.adapters.webhooks import completion_event

TOPICS = TopicSettings()
AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def published(rounds: list[list[Change]]) -> list[tuple[str, EmittedEvent]]:
    """Every record `publish` puts in the outbox over the rounds: each change id kept once,
    ever (the history), each round's fresh changes through `change_records`."""
    recorded: set[str] = set()
    out: list[tuple[str, EmittedEvent]] = []
    for changed in rounds:
        fresh = new_changes(((change_id(c), c) for c in changed), recorded)
        recorded.update(cid for cid, _ in fresh)
        for topic, event in change_records(fresh, TOPICS):
            assert isinstance(event, EmittedEvent)
            out.append((topic, event))
    return out


# Rounds that reuse causes, customers and instants: one cause, one customer, one instant in
# two rounds with different dimensions is what a cause-derived id could not tell apart.
shared = st.sampled_from(["event:shop/o-1", "time:2026-11-23T10:00:00Z", "rules:v7"])


@st.composite
def colliding_changes(draw: st.DrawFn) -> Change:
    c: Change = draw(changes())
    return Change(
        customer_id=draw(st.sampled_from(["c-1", "c-2", c.customer_id])),
        dimension=draw(st.sampled_from(["value_tier", "lifecycle", c.dimension])),
        from_label=c.from_label,
        to=c.to,
        cause=draw(shared),
        effective_at=draw(st.sampled_from([AT, c.effective_at])),
    )


@given(st.lists(st.lists(colliding_changes(), max_size=6), max_size=4))
def test_no_two_different_records_share_source_and_id(rounds: list[list[Change]]) -> None:
    records = published(rounds)
    by_key: dict[tuple[str, str], tuple[str, EmittedEvent]] = {}
    for topic, event in records:
        key = (event.source, event.id)
        assert key not in by_key, f"{key} on {topic} and {by_key[key][0]}"
        by_key[key] = (topic, event)
    # And the same rounds again (a replay from scratch): the very same ids.
    assert [e.id for _, e in published(rounds)] == [e.id for _, e in records]


@given(st.lists(colliding_changes(), min_size=1, max_size=6))
def test_a_record_rebuilt_from_the_same_changes_has_the_same_id(changed: list[Change]) -> None:
    unique = {change_id(c): c for c in changed}
    first = change_records(list(unique.items()), TOPICS)
    again = change_records(list(reversed(unique.items())), TOPICS)
    assert sorted(e.id for _, e in first if isinstance(e, EmittedEvent)) == sorted(
        e.id for _, e in again if isinstance(e, EmittedEvent)
    )


def test_erasures_and_completions_have_ids_of_their_own() -> None:
    """The same cause, customer and instant in an erasure and in a change: other ids."""
    erased = erased_event(
        "c-1", cause="api", erased_through=AT, erased_at=AT, source="tierflow/classifier"
    )
    change = Change(
        customer_id="c-1",
        dimension="value_tier",
        from_label=None,
        to=Assignment("VIP", AT, "r", "why", {}, "v1"),
        cause="api",
        effective_at=AT,
    )
    changed = change_records([(change_id(change), change)], TOPICS)
    assert len(changed) == 2  # v2 and tier records
    assert erased.id not in {e.id for _, e in changed if isinstance(e, EmittedEvent)}
    action = {
        "action_id": "a-1",
        "kind": "follow_up",
        "rule_id": "r",
        "customer_id": "c-1",
        "created_at": AT,
    }
    completion = completion_event(action)
    # Not a UUID: never a care action's id (uuid5) on the same source, tierflow/notifier.
    assert completion is not None
    assert completion["id"] == "care-action-a-1-revisit_done"


@given(st.lists(colliding_changes(), max_size=12), st.data())
def test_a_history_records_each_change_id_once_in_first_seen_order(
    changed: list[Change], data: st.DataObject
) -> None:
    identified = [(change_id(c), c) for c in changed]
    ids = [cid for cid, _ in identified]
    known = set(data.draw(st.lists(st.sampled_from(ids))) if ids else ())
    new = new_changes(identified, known)
    expected = [cid for i, cid in enumerate(ids) if cid not in known and cid not in ids[:i]]
    assert [cid for cid, _ in new] == expected
    # Each the change of its id's first occurrence.
    assert all(change is changed[ids.index(cid)] for cid, change in new)
