"""Facts derived from a rule set (or one of its dimensions) once per object. Pure.

Rule sets hold mappings, so they are not hashable; a process has a handful of them, each
alive for its whole life. The cache keeps the object itself beside its id, so a recycled id
of a discarded object is never mistaken for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

Key = TypeVar("Key")
Value = TypeVar("Value")


def once_per_object(fn: Callable[[Key], Value]) -> Callable[[Key], Value]:
    cache: dict[int, tuple[Key, Value]] = {}

    @functools.wraps(fn)
    def cached(obj: Key) -> Value:
        hit = cache.get(id(obj))
        if hit is None or hit[0] is not obj:
            hit = cache[id(obj)] = (obj, fn(obj))
        return hit[1]

    return cached
