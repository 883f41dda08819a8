"""Who may call what: API keys carry roles, and every route of every service names the role it
needs with `requires(Role.X)`.

Roles are independent (admin does not imply read): a key gets exactly the roles it is given, so
a dashboard's `read` key can never complete a task and an ingest key only sends events. A key
the caller does not present, that is unknown or revoked answers 401; a key without the role 403;
both RFC 9457 problem documents naming the role needed. Calls to `operate` and `admin` routes
are written to the audit log (tierflow_common.audit), denied ones included.

Keys are looked up in memory (tierflow_common.keys.KeyCache: one SHA-256 and a dict lookup a
request); `install_auth` gives an application its key cache, error handler and audit log.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tierflow_common.audit import AUDIT_SLOT, AuditCall, AuditMiddleware, AuditRecorder
from tierflow_common.errors_http import problem
from tierflow_common.settings import MetricsAccess


class Role(StrEnum):
    INGEST = "ingest"  # send events, for the key's sources only
    READ = "read"  # customers, segments, stats, history, models, rules, actions, deliveries
    OPERATE = "operate"  # ack/complete/reassign actions, retry deliveries, redrive, overrides
    ADMIN = "admin"  # keys, rule activation, model refits, erasure, the audit log


ALL_ROLES = frozenset(Role)
AUDITED_ROLES = frozenset({Role.OPERATE, Role.ADMIN})
ANY_SOURCE = "*"


@dataclass(frozen=True)
class Principal:
    """The caller a valid key stands for."""

    key_id: str
    name: str
    roles: frozenset[Role]
    sources: tuple[str, ...]  # CloudEvents sources an `ingest` key may send ('*' = any)

    def owns(self, source: str) -> bool:
        return ANY_SOURCE in self.sources or source in self.sources


class KeyLookup(Protocol):
    def lookup(self, key: str) -> Principal | None: ...


class AccessDenied(Exception):
    """401 or 403; `response()` is its problem document."""

    def __init__(self, status: int, role: Role, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.role, self.title, self.detail = status, role, title, detail

    def response(self) -> JSONResponse:
        challenge = "Bearer" if self.status == 401 else 'Bearer error="insufficient_scope"'
        return problem(
            self.status,
            "unauthorized" if self.status == 401 else "missing-role",
            self.title,
            self.detail,
            headers={"WWW-Authenticate": challenge},
            required_role=str(self.role),
        )


def authorize(
    principal: Principal | None, role: Role, *, presented: bool
) -> Principal | AccessDenied:
    """The principal if it may act in `role`, else why not (pure: tested property by property)."""
    if principal is None:
        if not presented:
            return AccessDenied(
                401,
                role,
                "API key required",
                f"this call needs an API key with role '{role}': send 'Authorization: Bearer "
                f"<key>'; create keys with `tierflow keys create --role {role}`",
            )
        return AccessDenied(
            401,
            role,
            "Invalid API key",
            f"the API key is unknown or revoked; this call needs a key with role '{role}'",
        )
    if role not in principal.roles:
        held = ", ".join(sorted(principal.roles)) or "none"
        return AccessDenied(
            403,
            role,
            "Role required",
            f"API key {principal.key_id} ({principal.name}) lacks role '{role}', which this "
            f"call needs (it has: {held})",
        )
    return principal


BEARER = HTTPBearer(
    auto_error=False,
    description="API key: `Authorization: Bearer tf_...` (`tierflow keys create --role ...`)",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
_KEYS_STATE = "tierflow_keys"


def _keys(request: Request) -> KeyLookup:
    keys: KeyLookup | None = getattr(request.app.state, _KEYS_STATE, None)
    if keys is None:  # fail closed: a route that asks for a role on an app without keys
        raise RuntimeError("requires() on an application without install_auth()")
    return keys


async def _check(
    request: Request, credentials: HTTPAuthorizationCredentials | None, role: Role
) -> Principal:
    token = credentials.credentials if credentials is not None else None
    principal = _keys(request).lookup(token) if token else None
    if role in AUDITED_ROLES:
        calls: list[AuditCall] | None = request.scope.get(AUDIT_SLOT)
        if calls is None:
            raise RuntimeError(f"a '{role}' route on an application without an audit log")
        route = request.scope.get("route")
        calls.append(
            AuditCall(
                key_id=principal.key_id if principal else None,
                key_name=principal.name if principal else None,
                role=str(role),
                method=request.method,
                route=str(getattr(route, "path", request.url.path)),
                target={k: str(v) for k, v in request.path_params.items()},
            )
        )
    checked = authorize(principal, role, presented=bool(token))
    if isinstance(checked, AccessDenied):
        raise checked
    return checked


@cache
def requires(role: Role) -> Any:
    """The dependency a route declares to need `role`: `Annotated[Principal, requires(R)]` as a
    parameter, or `dependencies=[requires(R)]`. One object per role, so a route that does both
    checks (and audits) once. The OpenAPI document lists the bearer scheme with the role."""

    async def authorized(request: Request, credentials: Credentials) -> Principal:
        return await _check(request, credentials, role)

    authorized.__name__ = f"requires_{role}"
    return Security(authorized, scopes=[str(role)])


def metrics_guard(access: MetricsAccess) -> Any:
    """Who may read `/metrics`: anyone (`open`); callers on a loopback address, others with a
    `read` key (`loopback`); only callers with a `read` key (`key`)."""

    async def guard(request: Request, credentials: Credentials) -> None:
        if access == "open":
            return
        if access == "loopback" and _is_loopback(request.client.host if request.client else ""):
            return
        await _check(request, credentials, Role.READ)

    return Security(guard, scopes=[str(Role.READ)])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install_auth(app: FastAPI, keys: KeyLookup, *, audit: AuditRecorder | None = None) -> None:
    """Give `app` the keys its `requires` routes check and the 401/403 problem handler; with
    `audit`, record every call of its `operate`/`admin` routes (needed by such routes)."""
    setattr(app.state, _KEYS_STATE, keys)

    async def denied(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AccessDenied)
        return exc.response()

    app.add_exception_handler(AccessDenied, denied)
    if audit is not None:
        app.add_middleware(AuditMiddleware, log=audit)
