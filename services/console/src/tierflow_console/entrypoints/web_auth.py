"""Sign-in for people and scripts, on top of the services' one key-and-role check.

A browser signs in once with an API key; the console keeps the key server-side and gives the
browser an opaque session id in an HttpOnly, SameSite=Strict cookie. `SessionAuth` turns that
cookie back into `Authorization: Bearer <key>` before routing, so every console route checks
roles (and audits operate/admin calls) exactly as the services do with `requires(Role.X)`; a
script sends the same key as `Authorization: Bearer` itself. Every form of a cookie session
carries the session's CSRF token (`csrf_protected`); a bearer caller needs none, since no
browser adds that header by itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tierflow_common.auth import AccessDenied
from tierflow_console.domain.sessions import Session, SessionStore

SESSION_COOKIE = "tierflow_console_session"
LOGIN_COOKIE = "tierflow_console_login"  # double-submit token of the sign-in form
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SESSION_SLOT = "tierflow.console.session"
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SessionAuth:
    """ASGI middleware: a live session cookie stands for its key when no key is presented."""

    def __init__(self, app: ASGIApp, *, sessions: SessionStore, clock: Clock = utc_now) -> None:
        self.app, self.sessions, self.clock = app, sessions, clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            if not any(name == b"authorization" for name, _ in headers):
                session = self.sessions.get(_cookie(headers, SESSION_COOKIE), self.clock())
                if session is not None:
                    scope = dict(scope)
                    scope["headers"] = [
                        *headers,
                        (b"authorization", f"Bearer {session.api_key}".encode()),
                    ]
                    scope[_SESSION_SLOT] = session
        await self.app(scope, receive, send)


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for header, value in headers:
        if header == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == name:
                    return val
    return None


def session_of(request: Request) -> Session | None:
    session: Session | None = request.scope.get(_SESSION_SLOT)
    return session


def api_key_of(request: Request) -> str:
    """The key this request acts with (the session's, or the caller's own bearer key)."""
    value = request.headers.get("authorization", "")
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def form_time(value: str | None) -> datetime | None:
    """A time from a form or query (`datetime-local` has no zone): read as UTC, the zone every
    page shows; None when empty or not a time."""
    if not value or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class CsrfRejected(Exception):
    pass


async def _csrf(request: Request) -> None:
    session = session_of(request)
    if session is None:
        return  # a bearer caller: no ambient credential a forged form could ride on
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        field = (await request.form()).get(CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    if not session.csrf_matches(presented):
        raise CsrfRejected


csrf_protected: Any = Depends(_csrf)
CsrfChecked = Annotated[None, csrf_protected]


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a path on this console only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") or session_of(request) is not None


def set_session_cookie(response: Response, session: Session, *, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session.session_id,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def denied_page_or_problem(
    request: Request, exc: AccessDenied, forbidden: Callable[[Request, AccessDenied], Response]
) -> Response:
    if not wants_html(request):
        return exc.response()
    if exc.status == 401:
        return login_redirect(request)
    return forbidden(request, exc)
