"""Work the classifier runs in a process of its own (what-if simulations, churn fits): started
from a fork server, awaited without blocking the event loop, terminated when cancelled.

The child reports on a queue: ("progress", n) now and then, then ("result", value) or
("error", message)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import queue
from collections.abc import Callable
from typing import Any

# The modules the fork server imports once: the classifier's code its children share.
_PRELOAD = [
    "tierflow_classifier.adapters.simulation_process",
    "tierflow_classifier.adapters.churn_fit_process",
]


_PR_SET_NAME = 15


def os_name(name: str) -> str:
    """What `ps`, `top` and /proc/<pid>/comm show for a child named `name` (the kernel keeps
    15 bytes): "tierflow-simulation" -> "tf-simulation"."""
    return ("tf-" + name.removeprefix("tierflow-"))[:15]


def run_named(name: str, entry: Callable[[Any, Any], None], request: Any, messages: Any) -> None:
    """The child under its own name: an operator (and the bench, which counts a simulation's
    memory apart from a churn fit's) can tell the classifier's children apart."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the name is cosmetic
        ctypes.CDLL(None).prctl(_PR_SET_NAME, os_name(name).encode(), 0, 0, 0)
    entry(request, messages)


class ChildFailed(RuntimeError):
    """The child process reported an error, or died without a result."""


def forkserver_context() -> Any:
    """Children fork from a server process that imported the classifier once (not from the
    classifier: its threads, sockets and event loop stay out), so they start in milliseconds
    and share the imported code's memory instead of each loading its own."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


async def run_child(
    entry: Callable[[Any, Any], None],
    request: Any,
    *,
    name: str,
    on_progress: Callable[[int], None] | None = None,
) -> Any:
    """Run ``entry(request, messages)`` in a fresh process and return its result."""
    context = forkserver_context()
    messages = context.Queue()
    process = context.Process(
        target=run_named, args=(name, entry, request, messages), name=name, daemon=True
    )
    # Off the event loop: the first start also starts the fork server (an interpreter that
    # imports the classifier), a second or two the consumer must not wait for.
    await asyncio.to_thread(process.start)
    try:
        while True:
            try:
                kind, value = messages.get_nowait()
            except queue.Empty:
                if not process.is_alive() and messages.empty():
                    raise ChildFailed(
                        f"the {name} process ended (exit code {process.exitcode})"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            if kind == "progress":
                if on_progress is not None:
                    on_progress(int(value))
            elif kind == "result":
                return value
            else:
                raise ChildFailed(str(value))
    finally:
        if process.is_alive():
            process.terminate()
        await asyncio.to_thread(process.join, 10)
        messages.close()
