"""What every page shares: the templates, the navigation a key's roles allow, the flash message
of the last form, and the answer to a form (back to a page, or JSON for a script)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from tierflow_common.auth import Principal, Role
from tierflow_console.adapters.services import ServiceError
from tierflow_console.domain.heatmap import heat_colour
from tierflow_console.domain.sessions import Flash, SessionStore
from tierflow_console.entrypoints.web_auth import session_of

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
NAV = (
    ("/", "Overview"),
    ("/customers", "Customers"),
    ("/actions", "Actions"),
    ("/dead-letters", "Dead letters"),
    ("/rules", "Rules"),
    ("/topics", "Topics"),
)


@dataclass
class Pages:
    sessions: SessionStore
    templates: Jinja2Templates

    @classmethod
    def create(cls, sessions: SessionStore) -> Pages:
        templates = Jinja2Templates(directory=TEMPLATES)
        templates.env.filters["heat"] = heat_colour
        templates.env.filters["pretty"] = pretty_json
        return cls(sessions, templates)

    def render(
        self,
        request: Request,
        template: str,
        principal: Principal | None,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        session = session_of(request)
        flash = self.sessions.take_flash(session.session_id) if session else None
        roles = sorted(str(r) for r in principal.roles) if principal else []
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "principal": principal,
                "roles": roles,
                "can_operate": principal is not None and Role.OPERATE in principal.roles,
                "can_admin": principal is not None and Role.ADMIN in principal.roles,
                "csrf": session.csrf_token if session else "",
                "nav": NAV,
                "here": "/" + request.url.path.strip("/").split("/")[0],
                "flash": flash,
                **context,
            },
            status_code=status_code,
        )

    def done(self, request: Request, back: str, text: str, result: Any = None) -> Response:
        """A form worked: a person goes back to the page with a note, a script gets JSON."""
        session = session_of(request)
        if session is None:
            return JSONResponse({"status": "ok", "message": text, "result": result})
        self.sessions.flash(session.session_id, Flash("ok", text))
        return RedirectResponse(back, status_code=303)

    def failed(self, request: Request, back: str, error: ServiceError) -> Response:
        session = session_of(request)
        if session is None:
            return JSONResponse(
                {"title": error.title, "status": error.status, "detail": error.detail},
                status_code=error.status,
                media_type="application/problem+json",
            )
        self.sessions.flash(
            session.session_id, Flash("error", f"{error.title}: {error.detail}".strip(": "))
        )
        return RedirectResponse(back, status_code=303)


def pretty_json(value: Any) -> str:
    """JSON for people: indented, unicode as is (the template escapes it for HTML)."""
    return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True, default=str)
