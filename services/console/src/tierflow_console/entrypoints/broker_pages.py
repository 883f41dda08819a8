"""`/dead-letters` (browse each DLQ, redrive after a fix) and `/topics` (find records by
customer, event id, type or time), both read from the broker with tierflow_common.operations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from tierflow_common.auth import Principal, Role, requires
from tierflow_common.operations import DeadLetter, TopicRecord
from tierflow_console.adapters.services import ServiceError
from tierflow_console.entrypoints.context import Console
from tierflow_console.entrypoints.web_auth import CsrfChecked, form_time

Reader = Annotated[Principal, requires(Role.READ)]
Operator = Annotated[Principal, requires(Role.OPERATE)]


def build_broker_pages(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    topics = console.topics
    dlqs = (topics.classifier_dlq, topics.notifier_dlq)

    @router.get("/dead-letters", response_class=HTMLResponse)
    async def dead_letters(
        request: Request,
        principal: Reader,
        topic: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> HTMLResponse:
        chosen = topic if topic in dlqs else dlqs[0]
        error = None
        letters: Sequence[DeadLetter] = []
        try:
            letters = await console.broker.dead_letters(chosen, limit=limit)
        except Exception as exc:  # broker away: say so on the page
            error = str(exc) or type(exc).__name__
        return console.pages.render(
            request,
            "dead_letters.html",
            principal,
            title="Dead letters",
            dlqs=dlqs,
            topic=chosen,
            letters=letters,
            error=error,
        )

    @router.post("/dead-letters/redrive")
    async def redrive(
        request: Request,
        _: Operator,
        __: CsrfChecked,
        topic: Annotated[str, Form()],
        partition: Annotated[int | None, Form()] = None,
        offset: Annotated[int | None, Form()] = None,
        all: Annotated[bool, Form()] = False,
    ) -> Response:
        back = f"/dead-letters?topic={topic}"
        if topic not in dlqs:
            return console.pages.failed(
                request, back, ServiceError("console", 422, "Unknown topic", f"{topic!r}")
            )
        try:
            result = await console.broker.redrive(
                topic, partition=partition, offset=offset, everything=all
            )
        except Exception as exc:
            error = ServiceError("broker", 503, "Redrive failed", str(exc))
            return console.pages.failed(request, back, error)
        return console.pages.done(
            request, back, f"Redrove {result} record(s) from {topic}", {"redriven": result}
        )

    @router.get("/topics", response_class=HTMLResponse)
    async def topic_search(
        request: Request,
        principal: Reader,
        topic: str | None = None,
        customer: str | None = None,
        event_id: str | None = None,
        event_type: Annotated[str | None, Query(alias="type")] = None,
        since: str | None = None,
        until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> HTMLResponse:
        names = topics.all_topics()
        chosen = topic if topic in names else topics.customer_events
        error = None
        records: Sequence[TopicRecord] = []
        try:
            records = await console.broker.search(
                chosen,
                key=customer or None,
                event_id=event_id or None,
                type=event_type or None,
                since=form_time(since),
                until=form_time(until),
                limit=limit,
            )
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        return console.pages.render(
            request,
            "topics.html",
            principal,
            title="Topics",
            names=names,
            topic=chosen,
            values=dict(request.query_params),
            records=records,
            error=error,
        )

    return router
