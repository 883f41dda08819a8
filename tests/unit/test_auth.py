"""Role checks (tierflow_common.auth): who gets 401, who 403, what the problem says, what the
OpenAPI document shows, and which calls the audit middleware records."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from tierflow_common.audit import AuditCall
from tierflow_common.auth import (
    ALL_ROLES,
    AUDITED_ROLES,
    AccessDenied,
    Principal,
    Role,
    authorize,
    install_auth,
    requires,
)
from tierflow_common.health import ops_router
from tierflow_common.keys import hash_key, key_roles

roles = st.frozensets(st.sampled_from(list(Role)))
principals = st.builds(
    Principal,
    key_id=st.text("0123456789abcdef", min_size=8, max_size=8),
    name=st.text(min_size=1, max_size=20),
    roles=roles,
    sources=st.tuples(st.sampled_from(["*", "shop", "pos"])),
)


@given(principals, st.sampled_from(list(Role)))
def test_a_key_may_act_exactly_in_the_roles_it_holds(principal: Principal, role: Role) -> None:
    checked = authorize(principal, role, presented=True)
    if role in principal.roles:
        assert checked is principal
    else:
        assert isinstance(checked, AccessDenied)
        assert checked.status == 403
        assert f"'{role}'" in checked.detail
        assert principal.key_id in checked.detail


@given(st.sampled_from(list(Role)), st.booleans())
def test_no_key_or_an_unknown_one_is_401_naming_the_role(role: Role, presented: bool) -> None:
    checked = authorize(None, role, presented=presented)
    assert isinstance(checked, AccessDenied)
    assert checked.status == 401
    assert f"'{role}'" in checked.detail
    assert checked.title == ("Invalid API key" if presented else "API key required")


def test_the_problem_document_names_the_role_and_the_challenge() -> None:
    denied = authorize(
        Principal("k1", "dash", frozenset({Role.READ}), ()), Role.OPERATE, presented=True
    )
    assert isinstance(denied, AccessDenied)
    response = denied.response()
    assert response.status_code == 403
    assert response.media_type == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert b'"required_role":"operate"' in response.body


@given(st.one_of(st.none(), roles), st.lists(st.sampled_from(["*", "shop"]), max_size=2))
def test_new_keys_are_ingest_keys_unless_told_and_only_ingest_keys_have_sources(
    given_roles: frozenset[Role] | None, sources: list[str]
) -> None:
    wanted = given_roles or frozenset({Role.INGEST})
    if (Role.INGEST in wanted) != bool(sources):
        with pytest.raises(ValueError, match="source"):
            key_roles(given_roles, sources)
    else:
        assert key_roles(given_roles, sources) == wanted


class DictKeys:
    """The KeyLookup protocol over a dict (KeyCache is the same over the api_keys table)."""

    def __init__(self, keys: dict[str, Principal]) -> None:
        self._keys = {hash_key(k): p for k, p in keys.items()}

    def lookup(self, key: str) -> Principal | None:
        return self._keys.get(hash_key(key))


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[AuditCall, int]] = []

    async def record(self, call: AuditCall, status: int) -> None:
        self.calls.append((call, status))


KEYS = {
    f"tf_{role}": Principal(f"id-{role}", f"{role} key", frozenset({role}), ()) for role in Role
} | {"tf_all": Principal("id-all", "everything", ALL_ROLES, ("*",))}


def app_with(audit: Recorded, metrics_access: str = "loopback") -> FastAPI:
    app = FastAPI()

    @app.get("/v1/things/{thing_id}")
    async def read_thing(
        thing_id: str, who: Annotated[Principal, requires(Role.READ)]
    ) -> dict[str, str]:
        return {"thing": thing_id, "by": who.key_id}

    @app.post("/v1/things/{thing_id}/fix", dependencies=[requires(Role.OPERATE)])
    async def fix_thing(thing_id: str) -> dict[str, str]:
        if thing_id == "broken":
            raise RuntimeError("boom")
        return {"fixed": thing_id}

    @app.post("/v1/admin/things/{thing_id}")
    async def admin_thing(
        thing_id: str, who: Annotated[Principal, requires(Role.ADMIN)]
    ) -> dict[str, str]:
        return {"thing": thing_id}

    install_auth(app, DictKeys(KEYS), audit=audit)
    app.include_router(ops_router({}, metrics_access=metrics_access))  # type: ignore[arg-type]
    return app


def client(app: FastAPI, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 40000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("role", list(Role))
async def test_routes_answer_only_keys_with_their_role(role: Role) -> None:
    audit = Recorded()
    routes = {
        Role.READ: ("GET", "/v1/things/t1"),
        Role.OPERATE: ("POST", "/v1/things/t1/fix"),
        Role.ADMIN: ("POST", "/v1/admin/things/t1"),
    }
    async with client(app_with(audit)) as http:
        for needed, (method, path) in routes.items():
            resp = await http.request(method, path, headers=bearer(f"tf_{role}"))
            want = 200 if role == needed else 403
            assert resp.status_code == want, (role, needed, resp.text)
            if want == 403:
                assert resp.headers["content-type"] == "application/problem+json"
                assert resp.json()["required_role"] == needed
            assert (await http.request(method, path, headers=bearer("tf_all"))).status_code == 200


async def test_anonymous_and_unknown_keys_get_401_with_a_bearer_challenge() -> None:
    async with client(app_with(Recorded())) as http:
        for headers in ({}, bearer("tf_unknown"), {"authorization": "Basic tf_read"}):
            resp = await http.get("/v1/things/t1", headers=headers)
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"] == "Bearer"
            body = resp.json()
            assert body["required_role"] == "read"
            assert "'read'" in body["detail"]
        assert (await http.get("/livez")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_operate_and_admin_calls_are_audited_denied_and_failed_ones_too() -> None:
    audit = Recorded()
    async with client(app_with(audit)) as http:
        await http.get("/v1/things/t1", headers=bearer("tf_read"))  # read: not audited
        await http.post("/v1/things/a1/fix", headers=bearer("tf_operate"))
        await http.post("/v1/things/a2/fix", headers=bearer("tf_read"))
        await http.post("/v1/things/a3/fix")
        assert (
            await http.post("/v1/things/broken/fix", headers=bearer("tf_all"))
        ).status_code == 500
        await http.post("/v1/admin/things/x", headers=bearer("tf_admin"))
    got = [(c.key_id, c.role, c.method, c.route, c.target, s) for c, s in audit.calls]
    assert got == [
        ("id-operate", "operate", "POST", "/v1/things/{thing_id}/fix", {"thing_id": "a1"}, 200),
        ("id-read", "operate", "POST", "/v1/things/{thing_id}/fix", {"thing_id": "a2"}, 403),
        (None, "operate", "POST", "/v1/things/{thing_id}/fix", {"thing_id": "a3"}, 401),
        ("id-all", "operate", "POST", "/v1/things/{thing_id}/fix", {"thing_id": "broken"}, 500),
        ("id-admin", "admin", "POST", "/v1/admin/things/{thing_id}", {"thing_id": "x"}, 200),
    ]
    assert {c.role for c, _ in audit.calls} <= {str(r) for r in AUDITED_ROLES}


async def test_an_audited_route_without_an_audit_log_fails_closed() -> None:
    app = FastAPI()

    @app.post("/v1/fix", dependencies=[requires(Role.OPERATE)])
    async def fix() -> dict[str, str]:
        return {}

    install_auth(app, DictKeys(KEYS))
    async with client(app) as http:
        assert (await http.post("/v1/fix", headers=bearer("tf_operate"))).status_code == 500


@pytest.mark.parametrize(
    ("access", "host", "key", "status"),
    [
        ("open", "10.1.2.3", None, 200),
        ("loopback", "127.0.0.1", None, 200),
        ("loopback", "::1", None, 200),
        ("loopback", "10.1.2.3", None, 401),
        ("loopback", "10.1.2.3", "tf_ingest", 403),
        ("loopback", "10.1.2.3", "tf_read", 200),
        ("key", "127.0.0.1", None, 401),
        ("key", "127.0.0.1", "tf_read", 200),
    ],
)
async def test_metrics_access_follows_the_setting(
    access: str, host: str, key: str | None, status: int
) -> None:
    async with client(app_with(Recorded(), access), host=host) as http:
        resp = await http.get("/metrics", headers=bearer(key) if key else {})
        assert resp.status_code == status


def test_openapi_shows_the_bearer_scheme_and_role_on_protected_routes_only() -> None:
    doc = app_with(Recorded()).openapi()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths = doc["paths"]
    assert paths["/v1/things/{thing_id}"]["get"]["security"] == [{"HTTPBearer": ["read"]}]
    assert paths["/v1/things/{thing_id}/fix"]["post"]["security"] == [{"HTTPBearer": ["operate"]}]
    assert "security" not in paths["/livez"]["get"]
    assert "security" not in paths["/readyz"]["get"]


@pytest.mark.parametrize(
    ("access", "security"),
    [
        ("open", None),
        ("loopback", [{"HTTPBearer": ["read"]}, {}]),
        ("key", [{"HTTPBearer": ["read"]}]),
    ],
)
def test_the_document_says_whether_metrics_needs_a_key(
    access: str, security: list[dict[str, list[str]]] | None
) -> None:
    doc = app_with(Recorded(), access).openapi()
    assert doc["paths"]["/metrics"]["get"].get("security") == security
