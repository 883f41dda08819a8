"""`/login` and `/logout`: a key in, a session cookie out (and back)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tierflow_common.auth import KeyLookup
from tierflow_console.domain.sessions import SessionStore
from tierflow_console.entrypoints.pages import Pages
from tierflow_console.entrypoints.web_auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Clock,
    CsrfChecked,
    new_login_token,
    safe_next,
    set_session_cookie,
)


def build_signin(
    pages: Pages, sessions: SessionStore, keys: KeyLookup, *, clock: Clock, secure: bool
) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def form(request: Request, target: str, error: str | None, status: int) -> HTMLResponse:
        token = new_login_token()
        response = pages.render(
            request,
            "login.html",
            None,
            title="Sign in",
            next=safe_next(target),
            login_token=token,
            error=error,
            status_code=status,
        )
        response.set_cookie(
            LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/login"
        )
        return response

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return form(request, next, None, 200)

    @router.post("/login")
    async def login(
        request: Request,
        api_key: Annotated[str, Form()],
        login_token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        # Double-submit: a page elsewhere cannot read our cookie to copy it into its form, so
        # it cannot sign a visitor in with the attacker's key (login CSRF).
        cookie = request.cookies.get(LOGIN_COOKIE)
        if not cookie or cookie != login_token:
            return form(request, next, "The sign-in form expired; please try again.", 403)
        principal = keys.lookup(api_key.strip())
        if principal is None:
            return form(request, next, "Unknown or revoked API key.", 401)
        session = sessions.open(api_key.strip(), clock())
        response = RedirectResponse(safe_next(next), status_code=303)
        set_session_cookie(response, session, secure=secure)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @router.post("/logout")
    async def logout(request: Request, _: CsrfChecked) -> Response:
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router
