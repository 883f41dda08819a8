"""The classifier builds change events without the contract's pydantic model (hot path); these
properties hold the fast builders to the model and to the standard library."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tierflow_classifier.domain.change_ids import CHANGE_NAMESPACE, change_id
from tierflow_classifier.domain.change_scores import Scored
from tierflow_classifier.domain.model import Assignment, Change
from tierflow_classifier.service_layer.reclassify import change_payload, change_records
from tierflow_common.contract import (
    ClassificationChangedData,
    ClassificationsChangedData,
    EmittedEvent,
)
from tierflow_common.contract.ids import rfc3339, uuid5
from tierflow_common.settings import TopicSettings

text = st.text(max_size=40)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    text,
)
instants = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(0))]),
)
explanations = st.one_of(
    st.fixed_dictionaries({"evaluated": st.lists(text, max_size=4)}),
    st.fixed_dictionaries(
        {
            "expression": text,
            "inputs": st.dictionaries(
                st.from_regex(r"[a-z_]{1,12}", fullmatch=True), values, max_size=6
            ),
        }
    ),
)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    at = draw(instants)
    return Change(
        # The contract's CustomerId: no whitespace at either end, no line breaks.
        customer_id=draw(
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ._:@-]{0,28}[A-Za-z0-9]", fullmatch=True)
        ),
        dimension=draw(st.from_regex(r"[a-z_]{1,20}", fullmatch=True)),
        from_label=draw(st.none() | text),
        to=Assignment(
            label=draw(st.text(min_size=1, max_size=20)),
            since=at,
            rule=draw(text),
            reason=draw(text),
            explanation=draw(explanations),
            rule_set_version=draw(text),
        ),
        cause=draw(text),
        effective_at=at,
    )


@given(changes())
def test_the_fast_payload_is_byte_for_byte_what_the_contract_model_serialises(
    change: Change,
) -> None:
    model = ClassificationChangedData(
        customer_id=change.customer_id,
        dimension=change.dimension,
        from_label=change.from_label,
        to_label=change.to.label,
        reason=change.to.reason,
        explanation=dict(change.to.explanation),
        cause=change.cause,
        effective_at=change.effective_at,
        rule_set_version=change.to.rule_set_version,
    )
    expected = orjson.dumps(model.model_dump(mode="json", by_alias=True))
    assert orjson.dumps(change_payload(change)) == expected
    # And the model accepts what the fast path wrote (the consumer's view).
    ClassificationChangedData.model_validate(orjson.loads(orjson.dumps(change_payload(change))))


@given(st.text())
def test_uuid5_is_the_standard_librarys(name: str) -> None:
    assert uuid5(CHANGE_NAMESPACE, name) == str(uuid.uuid5(CHANGE_NAMESPACE, name))


@given(changes())
def test_a_change_id_depends_on_cause_customer_and_dimension_only(change: Change) -> None:
    expected = uuid.uuid5(
        CHANGE_NAMESPACE, f"{change.cause}|{change.customer_id}|{change.dimension}"
    )
    assert change_id(change) == str(expected)


@given(instants)
def test_instants_are_written_as_pydantic_writes_them(at: datetime) -> None:
    model = ClassificationChangedData(
        customer_id="c",
        dimension="d",
        from_label=None,
        to_label="x",
        reason="",
        explanation={},
        cause="",
        effective_at=at,
        rule_set_version="",
    )
    assert rfc3339(at) == model.model_dump(mode="json")["effective_at"]


@given(st.lists(changes(), min_size=1, max_size=8))
def test_version_2_records_are_what_the_contract_model_serialises_and_keep_every_change(
    drawn: list[Change],
) -> None:
    topics = TopicSettings()
    unique: dict[str, Change] = {}
    for c in drawn:
        unique.setdefault(change_id(c), c)  # as publish() keeps them: one per id
    identified = list(unique.items())
    records = change_records(identified, topics)
    v2 = [e for t, e in records if t == topics.classification_changed]
    tiers = [e for t, e in records if t == topics.tier_changed]
    seen: list[str] = []
    for event in v2:
        assert isinstance(event, EmittedEvent)
        model = ClassificationsChangedData.model_validate(event.data)
        assert orjson.dumps(model.model_dump(mode="json", by_alias=True)) == orjson.dumps(
            event.data
        )
        assert event.subject == model.customer_id
        for cid, v1 in model.dimension_changes():
            seen.append(cid)
            original = dict(identified)[cid]
            assert orjson.dumps(v1.model_dump(mode="json", by_alias=True)) == orjson.dumps(
                change_payload(original)
            )
    assert sorted(seen) == sorted({cid for cid, _ in identified})
    # One record per customer, cause and instant; ids unique across both topics.
    keys = {(c.customer_id, c.cause, c.effective_at) for c in unique.values()}
    assert len(v2) == len(keys)
    ids = [e.id for _, e in records if isinstance(e, EmittedEvent)]
    assert len(ids) == len(set(ids))
    assert sorted(e.id for e in tiers if isinstance(e, EmittedEvent)) == sorted(
        cid for cid, c in identified if c.dimension == "value_tier"
    )


@given(changes(), st.floats(0, 1), st.floats(0, 1e6))
def test_a_version_2_record_carries_the_customers_scores_as_the_contract_serialises_them(
    change: Change, probability: float, clv: float
) -> None:
    topics = TopicSettings()
    scored = Scored(churn_probability=probability, clv=clv, value_at_risk=clv * probability)
    records = change_records([(change_id(change), change)], topics, {change.customer_id: scored})
    (event,) = [e for t, e in records if t == topics.classification_changed]
    assert isinstance(event, EmittedEvent)
    model = ClassificationsChangedData.model_validate(orjson.loads(orjson.dumps(event.data)))
    assert model.scores is not None
    assert (model.scores.churn_probability, model.scores.clv) == (probability, clv)
    assert orjson.dumps(model.model_dump(mode="json", by_alias=True)) == orjson.dumps(event.data)
