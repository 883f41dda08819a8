"""HTTP binary content mode (CloudEvents HTTP protocol binding 1.0, §3.1): the attributes in
`ce-*` headers, `datacontenttype` as the Content-Type header, the data as the body.

The request becomes the structured-mode object (`{attribute: value, ..., "data": ...}`) the
contract validates, the body parsed once; header values are strings (the binding carries no
types), percent-decoded (§3.1.3.2).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse

from tierflow_common.contract.attributes import is_json_media_type
from tierflow_common.errors_http import problem
from tierflow_ingest.domain.validation import FieldError
from tierflow_ingest.entrypoints import http_io
from tierflow_ingest.entrypoints.metrics import REJECTED
from tierflow_ingest.settings import IngestSettings

STRUCTURED = "application/cloudevents+json"
SPECVERSION_HEADER = "ce-specversion"
_PREFIX = b"ce-"
# Members of the structured form that binary mode carries elsewhere (body, Content-Type).
_NOT_HEADERS = {
    "data": "in binary mode the data is the request body",
    "data_base64": "in binary mode the data is the request body",
    "datacontenttype": "in binary mode datacontenttype is the Content-Type header",
}


def is_binary(request: Request, media: str) -> bool:
    """Binary mode: a `ce-specversion` header and a body that is not a structured event (a
    structured request's `ce-*` headers are transport headers, the binding says)."""
    return media != STRUCTURED and SPECVERSION_HEADER in request.headers


def _text(raw: bytes) -> str | None:
    """A header value percent-decoded, as UTF-8 (None: it is not)."""
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def attributes(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, Any] | list[FieldError]:
    """The attributes the `ce-*` headers carry, or what is wrong with the headers."""
    out: dict[str, Any] = {}
    errors: list[FieldError] = []
    for raw_name, raw_value in raw_headers:
        name_bytes = raw_name.lower()
        if not name_bytes.startswith(_PREFIX):
            continue
        name = name_bytes[3:].decode("latin-1")
        value = _text(raw_value)
        if name in _NOT_HEADERS:
            errors.append(
                FieldError(name, f"{_NOT_HEADERS[name]}, not a ce-{name} header", "binary_mode")
            )
        elif value is None:
            errors.append(
                FieldError(name, "header value is not UTF-8 (after percent-decoding)", "encoding")
            )
        elif name in out:
            errors.append(FieldError(name, f"header ce-{name} is given more than once", "repeated"))
        else:
            out[name] = value
    return errors or out


async def read_event(request: Request, settings: IngestSettings) -> Any | JSONResponse:
    """The structured-mode object of a binary-mode request, or the problem that rejects it."""
    content_type = request.headers.get("content-type", "")
    if not is_json_media_type(content_type):
        REJECTED.labels(reason="content_type").inc()
        reason = (
            f"tierflow event data is JSON: Content-Type {content_type or '(none)'!r} is not "
            "application/json (or text/json or a +json type)"
        )
        return problem(
            415,
            "unsupported-media-type",
            "Unsupported content type",
            f"datacontenttype: {reason}",
            errors=[FieldError("datacontenttype", reason, "unsupported_media_type").as_dict()],
        )
    found = attributes(request.headers.raw)
    if isinstance(found, list):
        REJECTED.labels(reason="validation").inc()
        return problem(
            422,
            "invalid-event",
            "Invalid event",
            http_io.summary(found),
            errors=[e.as_dict() for e in found],
        )
    body = await http_io.read_body(request, settings)
    if isinstance(body, JSONResponse):
        return body
    found["datacontenttype"] = content_type
    if body:  # no body: no data (the contract says whether the type needs it)
        try:
            found["data"] = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            REJECTED.labels(reason="malformed_json").inc()
            return problem(
                400,
                "malformed-json",
                "Malformed JSON",
                f"data: the body is not valid JSON: {exc}",
                errors=[FieldError("data", f"not valid JSON: {exc}", "json_invalid").as_dict()],
            )
    return found
