"""Identifiers and instants as they appear on the wire, computed on the hot path.

`uuid5` gives what `str(uuid.uuid5(namespace, name))` gives without building UUID objects
(tests/unit/test_contract_ids.py checks both agree); `rfc3339` writes an instant the way the
contract's pydantic models serialise it (UTC as `Z`).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from datetime import datetime


@functools.cache
def _namespace_bytes(namespace: uuid.UUID) -> bytes:
    # UUID.bytes converts the UUID's int on every access: a few namespaces, millions of ids.
    return namespace.bytes


def uuid5(namespace: uuid.UUID, name: str) -> str:
    digest = bytearray(hashlib.sha1(_namespace_bytes(namespace) + name.encode()).digest()[:16])  # noqa: S324 - RFC 9562 name-based UUID, not a security hash
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def rfc3339(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
