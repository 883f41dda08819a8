"""The store's dated history for the churn fit, read from the customers' states (one streaming
pass). What each customer keeps is domain/purchase_days.py's: purchase days with their spend,
survey answers, and the complaints' opened/resolved times. A state written before the dated
history was kept contributes its lifetime counters to the purchase model only."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.domain.churn.fit import CustomerSummary
from tierflow_classifier.domain.churn.history import WEEK_DAYS, ChurnHistory
from tierflow_classifier.domain.purchase_days import (
    PURCHASE_DAYS,
    SATISFACTION_LOG,
    day_number,
    instant_day,
    satisfaction_entries,
)
from tierflow_common.db.tables import customers


class _Columns:
    """Growing columns of one history (lists: appended per customer, arrays at the end)."""

    def __init__(self) -> None:
        self.n = 0
        self.buy_who: list[int] = []
        self.buy_day: list[float] = []
        self.buy_amount: list[float] = []
        self.complaint_who: list[int] = []
        self.opened: list[float] = []
        self.resolved: list[float] = []
        self.sat_who: list[int] = []
        self.sat_day: list[float] = []
        self.sat_value: list[float] = []
        self.undated: list[tuple[float, float, float, float]] = []

    def dated(
        self,
        days: Mapping[str, str],
        complaints: Mapping[str, Mapping[str, str]] | None,
        answers: Mapping[str, Any] | None,
        at_day: float,
    ) -> None:
        k = self.n
        self.n += 1
        for key, spend in days.items():
            self.buy_who.append(k)
            self.buy_day.append(day_number(key))
            self.buy_amount.append(float(spend))
        for record in (complaints or {}).values():
            if "opened_at" not in record:
                continue  # a resolution whose complaint is not known: nothing was open
            self.complaint_who.append(k)
            self.opened.append(instant_day(datetime.fromisoformat(record["opened_at"])))
            resolved = record.get("resolved_at")
            self.resolved.append(
                instant_day(datetime.fromisoformat(resolved)) if resolved else np.inf
            )
        for day, value in satisfaction_entries(answers or {}):
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
            purchase_customer=np.array(self.buy_who, dtype=np.intp),
            purchase_day=np.array(self.buy_day, dtype=np.float64),
            purchase_amount=np.array(self.buy_amount, dtype=np.float64),
            complaint_customer=np.array(self.complaint_who, dtype=np.intp),
            complaint_opened=np.array(self.opened, dtype=np.float64),
            complaint_resolved=np.array(self.resolved, dtype=np.float64),
            satisfaction_customer=np.array(self.sat_who, dtype=np.intp),
            satisfaction_day=np.array(self.sat_day, dtype=np.float64),
            satisfaction_value=np.array(self.sat_value, dtype=np.float64),
            undated=undated,
        )


async def collect_history(engine: AsyncEngine, at: datetime) -> ChurnHistory:
    """Every customer with a purchase before `at`, as the churn fit reads it."""
    at_day = instant_day(at)
    features = customers.c.features
    query = select(
        customers.c.purchases_lifetime,
        customers.c.first_purchase_at,
        customers.c.last_purchase_at,
        customers.c.net_spend_lifetime,
        features[PURCHASE_DAYS],
        features["complaints"],
        features[SATISFACTION_LOG],
    ).where(customers.c.purchases_lifetime > 0, customers.c.first_purchase_at <= at)
    columns = _Columns()
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=20_000))
        async for n, first, last, spend, days, complaints, answers in result:
            if days:
                columns.dated(days, complaints, answers, at_day)
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
