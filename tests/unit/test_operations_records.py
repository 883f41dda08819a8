"""The pure parts of the operations library: a dead letter read back exactly as the consumers
write it, rates from two samples of end offsets, topic names from settings names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from tierflow_common.cli_ops import topic_name
from tierflow_common.consumer import DeadLetter, Record, dead_letter_record
from tierflow_common.operations import TopicEnds, dead_letter
from tierflow_common.settings import TopicSettings
from tierflow_common.topic_reader import topic_record

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)


def consumer_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
) -> Record:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=int(AT.timestamp() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=tuple(headers),
    )


@given(
    partition=st.integers(0, 100),
    offset=st.integers(0, 10**12),
    reason=st.text(max_size=80),
    field=st.none() | st.text(min_size=1, max_size=30),
    value=st.none() | st.binary(max_size=40) | st.just(b'{"amount": "1.00"}'),
    key=st.none() | st.text(min_size=1, max_size=10).map(str.encode),
)
def test_a_dead_letter_reads_back_what_the_consumer_wrote(
    partition: int,
    offset: int,
    reason: str,
    field: str | None,
    value: bytes | None,
    key: bytes | None,
) -> None:
    original = consumer_record("events", partition, offset, key, value, [("ce_id", b"e-1")])
    written = dead_letter_record(DeadLetter(original, reason, field), "classifier")
    on_dlq = consumer_record("events.dlq", 0, 7, written.key, written.value, written.headers)
    letter = dead_letter(on_dlq)
    assert (letter.reason, letter.field) == (reason, field or None)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "events",
        partition,
        offset,
    )
    assert letter.consumer_group == "classifier"
    assert letter.headers == {"ce_id": "e-1"}
    assert letter.original == topic_record(on_dlq).value
    assert (letter.cursor, letter.timestamp) == ("0:7", AT)


def test_values_are_decoded_json_else_text() -> None:
    as_json = topic_record(consumer_record("t", 0, 0, b"k", b'{"a": [1, 2]}', []))
    as_text = topic_record(consumer_record("t", 0, 1, None, b"not json \xff", []))
    assert (as_json.value, as_json.key) == ({"a": [1, 2]}, "k")
    assert (as_text.value, as_text.key) == ("not json \\xff", None)


def test_rates_are_records_appended_per_second_between_two_samples() -> None:
    earlier = TopicEnds(AT, {"in": 100, "out": 10})
    later = TopicEnds(AT + timedelta(seconds=4), {"in": 300, "out": 10, "new": 8})
    assert later.rates_since(earlier) == {"in": 50.0, "out": 0.0, "new": 2.0}
    assert earlier.rates_since(earlier) == {"in": 0.0, "out": 0.0}


def test_topics_are_named_or_given_by_their_settings_name() -> None:
    topics = TopicSettings(classifier_dlq="x.dlq")
    assert topic_name("classifier_dlq", topics) == "x.dlq"
    assert topic_name("classifier", topics) == "x.dlq"
    assert topic_name("customer_events", topics) == "customer-events"
    assert topic_name("customer-events", topics) == "customer-events"
    assert topic_name("partitions", topics) == "partitions"
    assert topic_name("anything.else", topics) == "anything.else"
