"""Customer exports as CSV or XLSX, a page of rows at a time, memory bounded whatever the count.

CSV is streamed as it is written. XLSX cannot be: a workbook is a zip whose directory comes
last, so xlsxwriter writes it in `constant_memory` mode (each row goes to a temporary file as
it is written, nothing kept) into a temporary directory, in a worker thread a page at a time
(the event loop keeps serving the consumer), and the finished file is then streamed and
removed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import tempfile
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import xlsxwriter
from xlsxwriter.worksheet import Worksheet

from tierflow_classifier.adapters.customer_search import CustomerRow, criteria, labels_of
from tierflow_classifier.domain.customer_features import ProfileField

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MEDIA_TYPES = {"csv": CSV_MEDIA_TYPE, "xlsx": XLSX_MEDIA_TYPE}

# Profile basics, flattened: (column, profile field, key inside that field's value or None).
PROFILE_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("name", "name", None),
    ("email", "contacts", "email"),
    ("phone", "contacts", "phone"),
    ("country", "region", "country"),
    ("province", "region", "province"),
    ("city", "region", "city"),
    ("industry", "industry", None),
    ("company_size", "company_size", None),
    ("preferred_channel", "preferred_channel", None),
)
CRITERIA_COLUMNS = (
    "net_spend_lifetime",
    "purchases_lifetime",
    "last_purchase_at",
    "first_purchase_at",
    "open_complaints",
    "satisfaction_latest",
    "churn_probability",
    "clv",
)
_CHUNK = 64 * 1024


def _profile_columns(dimensions: Collection[str]) -> list[tuple[str, str, str | None]]:
    """The profile columns, but for those a dimension of that name already shows (industry,
    company size: their label is the profile value)."""
    return [c for c in PROFILE_COLUMNS if c[0] not in dimensions]


def header(dimensions: Sequence[str]) -> list[str]:
    profile = (c for c, _, _ in _profile_columns(dimensions))
    return ["customer_id", *profile, *CRITERIA_COLUMNS, *dimensions]


def _profile_value(profile: Mapping[str, ProfileField], name: str, key: str | None) -> Any:
    entry = profile.get(name)
    value = entry.value if entry is not None else None
    if key is not None:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def cells(row: CustomerRow, defaults: Mapping[str, str]) -> list[Any]:
    """One export row: strings, numbers, datetimes or None, in `header` order."""
    crit = criteria(row)
    labels = labels_of(row.state, defaults)
    return [
        row.state.customer_id,
        *(_profile_value(row.state.profile, n, k) for _, n, k in _profile_columns(defaults)),
        *(crit[c] for c in CRITERIA_COLUMNS),
        *(labels[d] for d in defaults),
    ]


def _text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


async def csv_stream(
    pages: AsyncIterator[list[CustomerRow]], defaults: Mapping[str, str]
) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header(list(defaults)))
    yield buffer.getvalue().encode()
    async for rows in pages:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows([_text(v) for v in cells(r, defaults)] for r in rows)
        yield buffer.getvalue().encode()


def _write_rows(
    sheet: Worksheet, first: int, rows: list[CustomerRow], defaults: Mapping[str, str]
) -> None:
    spend = header(list(defaults)).index("net_spend_lifetime")
    for i, row in enumerate(rows):
        values = cells(row, defaults)
        for col, value in enumerate(values):
            if value is None:
                continue
            if col == spend:
                sheet.write_number(first + i, col, float(value))  # a sum-able number
            elif isinstance(value, str):
                # Text stays text (an id or a phone number that looks like a number).
                sheet.write_string(first + i, col, value)
            else:
                sheet.write(first + i, col, _text(value))


async def xlsx_stream(
    pages: AsyncIterator[list[CustomerRow]], defaults: Mapping[str, str]
) -> AsyncIterator[bytes]:
    folder = Path(tempfile.mkdtemp(prefix="tierflow-export-"))
    try:
        path = folder / "customers.xlsx"
        book = xlsxwriter.Workbook(str(path), {"constant_memory": True, "tmpdir": str(folder)})
        sheet = book.add_worksheet("customers")
        sheet.write_row(0, 0, header(list(defaults)))
        line = 1
        async for rows in pages:
            await asyncio.to_thread(_write_rows, sheet, line, rows, defaults)
            line += len(rows)
        await asyncio.to_thread(book.close)
        with path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, _CHUNK):
                yield chunk
    finally:
        shutil.rmtree(folder, ignore_errors=True)
