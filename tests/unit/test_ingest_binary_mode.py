"""HTTP binary content mode: `ce-*` headers become the attributes the contract validates."""

from __future__ import annotations

from tierflow_ingest.domain.validation import FieldError
from tierflow_ingest.entrypoints.binary_mode import attributes


def test_ce_headers_are_the_attributes_and_other_headers_are_not() -> None:
    found = attributes(
        [
            (b"CE-ID", b"o-1"),  # header names are case-insensitive
            (b"ce-comexample", b"Gr%C3%BC%C3%9Fe%20%F0%9F%8C%8E"),  # percent-encoded UTF-8
            (b"ce-plain", b"100%"),  # a `%` that encodes nothing stays
            (b"user-agent", b"foo"),
            (b"content-type", b"application/json"),
        ]
    )
    assert found == {"id": "o-1", "comexample": "Grüße 🌎", "plain": "100%"}


def test_what_binary_mode_cannot_carry_names_the_attribute() -> None:
    found = attributes(
        [
            (b"ce-id", b"a"),
            (b"ce-id", b"b"),
            (b"ce-data", b"{}"),
            (b"ce-x", b"%FF"),
        ]
    )
    assert isinstance(found, list)
    assert [(e.field, e.code) for e in found] == [
        ("id", "repeated"),
        ("data", "binary_mode"),
        ("x", "encoding"),
    ]
    assert all(isinstance(e, FieldError) and e.reason for e in found)
