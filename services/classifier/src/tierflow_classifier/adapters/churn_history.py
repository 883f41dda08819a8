"""The store's dated history for the churn fit, read from the customers' states (one streaming
pass). What each customer keeps is domain/purchase_days.py's: purchase days with their spend,
survey answers, and the complaints' opened/resolved times. A state written before the dated
history was kept contributes its lifetime counters to the purchase model only."""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.domain.churn.fit import CustomerSummary
from tierflow_classifier.domain.churn.history import WEEK_DAYS, ChurnHistory
from tierflow_classifier.domain.customer_features import Complaint, decode_member
from tierflow_classifier.domain.purchase_days import (
    day_number,
    instant_day,
    satisfaction_entries,
)
from tierflow_common.db.tables import customers


class _Columns:
    """Growing columns of one history: typed arrays (8 bytes an item, where a list of floats
    holds 32), appended per customer, numpy arrays at the end. A million customers' purchase
    days fit in tens of megabytes this way."""

    def __init__(self) -> None:
        self.n = 0
        self.buy_who = array("q")
        self.buy_day = array("d")
        self.buy_amount = array("d")
        self.complaint_who = array("q")
        self.opened = array("d")
        self.resolved = array("d")
        self.sat_who = array("q")
        self.sat_day = array("d")
        self.sat_value = array("d")
        self.undated: list[tuple[float, float, float, float]] = []

    def dated(
        self,
        days: Mapping[str, Decimal],
        complaints: Mapping[str, Complaint],
        answers: Mapping[str, int],
        at_day: float,
    ) -> None:
        k = self.n
        self.n += 1
        for key, spend in days.items():
            self.buy_who.append(k)
            self.buy_day.append(day_number(key))
            self.buy_amount.append(float(spend))
        for record in complaints.values():
            if record.opened_at is None:
                continue  # a resolution whose complaint is not known: nothing was open
            self.complaint_who.append(k)
            self.opened.append(instant_day(record.opened_at))
            resolved = record.resolved_at
            self.resolved.append(instant_day(resolved) if resolved else np.inf)
        for day, value in satisfaction_entries(answers):
            if day <= at_day:
                self.sat_who.append(k)
                self.sat_day.append(day)
                self.sat_value.append(value)

    def history(self) -> ChurnHistory:
        undated = None
        if self.undated:
            x, t_x, T, spend = (
                np.array(v, dtype=np.float64) for v in zip(*self.undated, strict=True)
            )
            undated = CustomerSummary(
                customer_ids=np.full(x.size, -1), x=x, t_x=t_x, T=T, mean_spend=spend
            )
        return ChurnHistory(
            customers=self.n,
            purchase_customer=_indices(self.buy_who),
            purchase_day=_floats(self.buy_day),
            purchase_amount=_floats(self.buy_amount),
            complaint_customer=_indices(self.complaint_who),
            complaint_opened=_floats(self.opened),
            complaint_resolved=_floats(self.resolved),
            satisfaction_customer=_indices(self.sat_who),
            satisfaction_day=_floats(self.sat_day),
            satisfaction_value=_floats(self.sat_value),
            undated=undated,
        )


def _floats(values: array[float]) -> NDArray[np.float64]:
    return np.frombuffer(values, dtype=np.float64).copy() if values else np.zeros(0)


def _indices(values: array[int]) -> NDArray[np.intp]:
    found = np.frombuffer(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    return found.astype(np.intp)


async def collect_history(engine: AsyncEngine, at: datetime) -> ChurnHistory:
    """Every customer with a purchase before `at`, as the churn fit reads it."""
    at_day = instant_day(at)
    features = customers.c.features
    query = select(
        customers.c.purchases_lifetime,
        customers.c.first_purchase_at,
        customers.c.last_purchase_at,
        customers.c.net_spend_lifetime,
        features["purchase_days"].astext,
        features["complaints"].astext,
        features["satisfaction_log"].astext,
    ).where(customers.c.purchases_lifetime > 0, customers.c.first_purchase_at <= at)
    columns = _Columns()
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=20_000))
        async for n, first, last, spend, days, complaints, answers in result:
            if days:
                columns.dated(
                    decode_member("purchase_days", days),
                    decode_member("complaints", complaints),
                    decode_member("satisfaction_log", answers),
                    at_day,
                )
                continue
            age = max((at - first).total_seconds() / 86_400.0, 0.0)
            recency = min(max((last - first).total_seconds() / 86_400.0, 0.0), age)
            columns.undated.append(
                (
                    float(n - 1),
                    recency / WEEK_DAYS if n > 1 else 0.0,
                    age / WEEK_DAYS,
                    float(spend) / n if n > 1 and spend > 0 else float("nan"),
                )
            )
    return columns.history()
