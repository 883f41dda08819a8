"""Exceptions reach log lines without their messages, which may quote personal data."""

from __future__ import annotations

from tierflow_common.logging import error_fields


def _handler(record: dict[str, str]) -> None:
    raise ValueError(f"cannot use {record['email']}")


def test_an_exception_is_logged_by_type_and_place_not_by_message() -> None:
    try:
        _handler({"email": "zebulon@quaxworth.example"})
    except ValueError as exc:
        fields = error_fields(exc)
    assert fields["error_type"] == "ValueError"
    assert "test_log_privacy.py" in fields["raised_at"]
    assert "_handler" in fields["raised_at"]
    assert "zebulon" not in repr(fields)
