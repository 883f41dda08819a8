"""CloudEvents 1.0 attribute rules beyond the required ones: extension attributes,
`datacontenttype` and `dataschema` (one place; the envelope, the ingest's binary mode and the
Kafka encoder read them here).

Spec rules enforced (cloudevents/spec `cloudevents/spec.md`, "Attribute Naming Convention",
"Type System"): a name is lower-case ASCII letters and digits; a value is a String, an Integer
(32-bit signed) or a Boolean in the JSON format (URI, URI-reference, Timestamp and Binary
travel as strings). The 20-character name length is the spec's SHOULD, enforced here so every
name is also a short, valid Kafka header and HTTP header name. Tierflow's own limits, documented
in docs/cloudevents.md: at most `MAX_EXTENSIONS` extensions (the ingest counts them) of at most
`MAX_EXTENSION_VALUE` characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[a-z0-9]{1,20}$"
_NAME = re.compile(NAME_PATTERN)
_LONG_NAME = re.compile(r"[a-z0-9]+")
MAX_EXTENSIONS = 32
MAX_EXTENSION_VALUE = 2048
_INT32 = (-(2**31), 2**31 - 1)
# The attributes the spec defines (required and optional); `data`/`data_base64` are members of
# the JSON format, not attributes.
SPEC_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"}
)

# Media types whose data is JSON: what tierflow's event data always is (JSON format §3.1).
JSON_MEDIA_PATTERN = (
    r"^(application/json|text/json|application/[a-z0-9!#$&^_.+-]+\+json)"
    r"(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=([A-Za-z0-9!#$&^_.+-]+|\"[^\"]*\"))*$"
)
_JSON_MEDIA = re.compile(JSON_MEDIA_PATTERN)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


def is_json_media_type(media: str) -> bool:
    """Media types are case-insensitive (RFC 9110 §8.3.1); parameter values may not be."""
    kind, sep, params = media.partition(";")
    return _JSON_MEDIA.fullmatch(kind.strip().lower() + sep + params) is not None


def _json_media(value: str) -> str:
    if not is_json_media_type(value):
        raise PydanticCustomError(
            "cloudevents_media_type",
            "tierflow event data is JSON: datacontenttype must be application/json (or text/json "
            "or a +json type, with parameters), not {media!r}",
            {"media": value[:100]},
        )
    return value


def _uri(value: str) -> str:
    if _URI.fullmatch(value) is None:
        raise PydanticCustomError(
            "cloudevents_uri",
            "dataschema must be an absolute URI (RFC 3986: a scheme, then no white space)",
        )
    return value


JsonMediaType = Annotated[
    str,
    Field(
        max_length=200,
        description="A JSON media type (application/json, text/json or a +json type), "
        "parameters allowed; absent means application/json",
        examples=["application/json; charset=utf-8"],
        json_schema_extra={"pattern": JSON_MEDIA_PATTERN},
    ),
    AfterValidator(_json_media),
]
DataSchemaUri = Annotated[
    str,
    Field(
        max_length=2048,
        description="Absolute URI of the schema `data` adheres to",
        examples=["https://schemas.example.com/purchase/v1.json"],
        json_schema_extra={"pattern": "^" + _URI.pattern + "$"},
    ),
    AfterValidator(_uri),
]


def _extension_value(value: Any) -> str | int | bool:
    kind = type(value)
    if kind is str:
        if len(value) > MAX_EXTENSION_VALUE:
            raise PydanticCustomError(
                "cloudevents_value_too_long",
                "extension attribute value is longer than {limit} characters",
                {"limit": MAX_EXTENSION_VALUE},
            )
        return str(value)
    if kind is bool:
        return bool(value)
    if kind is int:
        if not _INT32[0] <= value <= _INT32[1]:
            raise PydanticCustomError(
                "cloudevents_integer_range",
                "a CloudEvents Integer is 32-bit signed (-2147483648 to 2147483647)",
            )
        return int(value)
    raise PydanticCustomError(
        "cloudevents_value_type",
        "an extension attribute's value is a string, an integer or a boolean "
        "(CloudEvents type system), not {kind}",
        {"kind": "null" if value is None else _JSON_KINDS.get(kind, kind.__name__)},
    )


_JSON_KINDS: dict[type, str] = {
    float: "a number with a fraction",
    dict: "an object",
    list: "an array",
}
ExtensionValue = Annotated[str | int | bool, BeforeValidator(_extension_value)]


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an extension attribute (None: it can)."""
    if name == "data_base64":
        return "tierflow events carry JSON data: send it as `data`, not `data_base64`"
    if _NAME.fullmatch(name) is None:
        if len(name) > 20 and _LONG_NAME.fullmatch(name):
            return "an attribute name is at most 20 characters"
        return "an attribute name consists of lower-case letters a-z and digits 0-9 only"
    return None


def _extension_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise PydanticCustomError("cloudevents_attribute_name", problem)
    return name


# Validated as the key of each extension member (pydantic reports the member as the field);
# nothing runs for an event without extensions.
ExtensionName = Annotated[str, AfterValidator(_extension_name)]


def too_many_extensions(extensions: Mapping[str, object] | None) -> str | None:
    """The first extension over `MAX_EXTENSIONS` (None: within the limit)."""
    if extensions and len(extensions) > MAX_EXTENSIONS:
        return list(extensions)[MAX_EXTENSIONS]
    return None


def header_text(value: str | int | bool) -> str:
    """An attribute value as a binding header carries it (the spec's canonical string)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if type(value) is str else str(value)


def extensions_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The envelope's JSON Schema: extension members by name pattern, nothing else."""
    # Any name but the spec's own members (a member matching both would be held to both).
    reserved = "|".join(sorted(SPEC_ATTRIBUTES | {"data"}))
    schema["patternProperties"] = {
        f"^(?!({reserved})$)[a-z0-9]{{1,20}}$": {
            "description": "A CloudEvents extension attribute (forwarded as a ce_* header)",
            "anyOf": [
                {"type": "string", "maxLength": MAX_EXTENSION_VALUE},
                {"type": "integer", "minimum": _INT32[0], "maximum": _INT32[1]},
                {"type": "boolean"},
            ],
        }
    }
    schema["additionalProperties"] = False
    schema["maxProperties"] = MAX_EXTENSIONS + len(SPEC_ATTRIBUTES) + 1
    return schema
