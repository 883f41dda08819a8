"""Wires the console: settings → key cache, service clients, broker, sampler → FastAPI app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from tierflow_common.audit import AuditLog
from tierflow_common.auth import AccessDenied, Role, install_auth
from tierflow_common.checks import database_check
from tierflow_common.db.engine import create_engine
from tierflow_common.health import ops_router
from tierflow_common.keys import KeyCache
from tierflow_common.logging import configure_logging
from tierflow_common.settings import (
    DatabaseSettings,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    TopicSettings,
)
from tierflow_console.adapters.broker import Broker
from tierflow_console.adapters.services import ServiceClient, Services
from tierflow_console.domain.samples import SampleWindow
from tierflow_console.domain.sessions import SessionStore
from tierflow_console.entrypoints.actions import build_actions
from tierflow_console.entrypoints.broker_pages import build_broker_pages
from tierflow_console.entrypoints.context import Console
from tierflow_console.entrypoints.customers import build_customers
from tierflow_console.entrypoints.overview import build_overview
from tierflow_console.entrypoints.pages import Pages
from tierflow_console.entrypoints.rules import build_rules
from tierflow_console.entrypoints.signin import build_signin
from tierflow_console.entrypoints.web_auth import (
    CsrfRejected,
    SessionAuth,
    api_key_of,
    denied_page_or_problem,
    utc_now,
)
from tierflow_console.service_layer.sampler import Sampler
from tierflow_console.settings import ConsoleSettings

STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    *,
    kafka: KafkaSettings | None = None,
    database: DatabaseSettings | None = None,
    topics: TopicSettings | None = None,
    settings: ConsoleSettings | None = None,
    metrics: MetricsSettings | None = None,
) -> FastAPI:
    kafka = kafka or KafkaSettings()
    database = database or DatabaseSettings()
    topics = topics or TopicSettings()
    settings = settings or ConsoleSettings()
    engine = create_engine(database)
    keys = KeyCache(engine, refresh_s=settings.keys_refresh_s)
    sessions = SessionStore(timedelta(seconds=settings.session_idle_s))
    pages = Pages.create(sessions)

    def client(name: str, url: str) -> ServiceClient:
        return ServiceClient(name, url, timeout_s=settings.request_timeout_s)

    services = Services(
        client("ingest", settings.ingest_url),
        client("classifier", settings.classifier_url),
        client("notifier", settings.notifier_url),
    )
    broker = Broker(kafka, topics, engine)
    window = SampleWindow(timedelta(seconds=settings.sample_window_s))
    sampler = Sampler(
        window,
        lag=broker.lag,
        ends=broker.ends,
        clock=utc_now,
        interval_s=settings.sample_interval_s,
    )
    console = Console(pages, services, broker, topics, window, sampler, utc_now)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await keys.first_load()
        tasks = [asyncio.create_task(keys.run()), asyncio.create_task(sampler.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task
            await services.aclose()
            await engine.dispose()

    app = FastAPI(
        title="tierflow console",
        version="1.0.0",
        description="The web console for the people who run tierflow and work its customers.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(
        build_signin(pages, sessions, keys, clock=utc_now, secure=settings.secure_cookies)
    )
    app.include_router(build_overview(console))
    app.include_router(build_customers(console))
    app.include_router(build_actions(console))
    app.include_router(build_broker_pages(console))
    app.include_router(build_rules(console))

    async def keys_ready() -> None:
        if not keys.loaded:
            raise RuntimeError("API keys not loaded yet")

    app.include_router(
        ops_router(
            {"database": database_check(engine), "api_keys": keys_ready},
            metrics_access=(metrics or MetricsSettings()).access,
        )
    )
    install_auth(app, keys, audit=AuditLog(engine, service="console"))

    def forbidden(request: Request, exc: AccessDenied) -> Response:
        principal = keys.lookup(api_key_of(request))
        return pages.render(
            request,
            "forbidden.html",
            principal,
            title="Not allowed",
            detail=exc.detail,
            status_code=403,
        )

    async def denied(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AccessDenied)
        return denied_page_or_problem(request, exc, forbidden)

    async def csrf_rejected(request: Request, _: Exception) -> Response:
        exc = AccessDenied(
            403,
            Role.OPERATE,
            "Form expired",
            "the form's CSRF token is missing or stale; reload the page",
        )
        return denied_page_or_problem(request, exc, forbidden)

    # After install_auth: these replace its JSON-only handler with one that also serves people.
    app.add_exception_handler(AccessDenied, denied)
    app.add_exception_handler(CsrfRejected, csrf_rejected)
    # Outermost: the session cookie becomes the bearer key before anything checks a role.
    app.add_middleware(SessionAuth, sessions=sessions, clock=utc_now)
    return app


def main() -> None:
    from tierflow_common.serve import serve  # noqa: PLC0415
    from tierflow_common.settings import ConsoleHttpSettings  # noqa: PLC0415

    configure_logging(LogSettings(), service="console")
    serve(create_app(), ConsoleHttpSettings())
