"""The three services' HTTP APIs, called with the signed-in user's own key: each service checks
the key's role itself (and audits operate/admin calls), the console only decides what to show."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from orjson import loads

Params = Mapping[str, str] | Sequence[tuple[str, str]]


class ServiceError(Exception):
    """A service answered with an error (its problem document) or could not be reached."""

    def __init__(self, service: str, status: int, title: str, detail: str) -> None:
        super().__init__(f"{service}: {status} {title}: {detail}")
        self.service, self.status, self.title, self.detail = service, status, title, detail


@dataclass(frozen=True)
class Health:
    service: str
    url: str
    ready: bool
    checks: Mapping[str, str]


class ServiceClient:
    def __init__(self, name: str, base_url: str, *, timeout_s: float) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> Health:
        try:
            response = await self._http.get("/readyz", timeout=3)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return Health(self.name, self.base_url, False, {"http": f"fail: {exc!s}"})
        return Health(self.name, self.base_url, response.status_code == 200, body.get("checks", {}))

    async def metrics_text(self, key: str) -> str:
        response = await self._http.get("/metrics", headers=_auth(key))
        return response.text if response.status_code == 200 else ""

    async def get(self, path: str, key: str, params: Params | None = None) -> Any:
        return await self.call("GET", path, key, params=params)

    async def post(
        self,
        path: str,
        key: str,
        body: object | None = None,
        *,
        params: Params | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        return await self.call(
            "POST", path, key, params=params, body=body, content=content, content_type=content_type
        )

    async def delete(self, path: str, key: str) -> Any:
        return await self.call("DELETE", path, key)

    async def call(
        self,
        method: str,
        path: str,
        key: str,
        *,
        params: Params | None = None,
        body: object | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = _auth(key)
        if content_type:
            headers["content-type"] = content_type
        try:
            response = await self._http.request(
                method, path, params=_pairs(params), json=body, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise ServiceError(
                self.name, 503, "Unreachable", str(exc) or type(exc).__name__
            ) from exc
        if response.status_code >= 400:
            raise _error(self.name, response.status_code, response.content)
        return loads(response.content) if response.content else None

    @asynccontextmanager
    async def stream(
        self, path: str, key: str, params: Params | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A response whose body is read as it arrives (exports)."""
        request = self._http.build_request("GET", path, params=_pairs(params), headers=_auth(key))
        response = await self._http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                raise _error(self.name, response.status_code, await response.aread())
            yield response
        finally:
            await response.aclose()


def _pairs(params: Params | None) -> tuple[tuple[str, str], ...] | None:
    if params is None:
        return None
    return tuple(params.items()) if isinstance(params, Mapping) else tuple(params)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _error(service: str, status: int, content: bytes) -> ServiceError:
    try:
        body = loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = str(body.get("detail", ""))
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            detail += " — " + "; ".join(
                f"{e.get('field', '?')}: {e.get('reason', '')}"
                for e in errors
                if isinstance(e, dict)
            )
        return ServiceError(service, status, str(body.get("title", "Error")), detail)
    return ServiceError(service, status, "Error", content[:200].decode(errors="replace"))


@dataclass(frozen=True)
class Services:
    ingest: ServiceClient
    classifier: ServiceClient
    notifier: ServiceClient

    def all(self) -> tuple[ServiceClient, ...]:
        return (self.ingest, self.classifier, self.notifier)

    async def aclose(self) -> None:
        for client in self.all():
            await client.aclose()
