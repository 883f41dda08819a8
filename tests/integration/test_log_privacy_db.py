"""Database errors carry no statement parameters (customer data) into messages and logs."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings

pytestmark = pytest.mark.integration


async def test_a_failed_statement_does_not_quote_its_parameters(
    database: DatabaseSettings,
) -> None:
    engine = create_engine(database)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(
                    text("SELECT 1 / CAST(:zero AS int), CAST(:email AS text)"),
                    {"zero": 0, "email": "zebulon@quaxworth.example"},
                )
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert "division by zero" in message
    assert "zebulon" not in message
