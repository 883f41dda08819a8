"""Care actions in the fault scenarios: the notifiers' playbook, a webhook receiver that records
every attempt and may answer with a fault, and the judgement of what it received against the
oracle (`tests/chaos/oracle.care_actions`) and against the changes the classifier published.

One action is one (customer, rule, triggering change): its id — the `webhook-id` of every
attempt to deliver it — derives from the change id and the rule. So:

- a redelivery is the same webhook-id accepted again (Standard Webhooks allows it: receivers
  dedupe by id): counted, not a failure;
- a duplicate action is one (customer, rule) accepted under more distinct webhook-ids than the
  oracle expects actions, or one webhook-id whose bodies name different actions;
- missing / unexpected: fewer or more distinct (customer, rule) actions than the oracle's, or a
  webhook-id that no published change implies (or one such id never accepted).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.log_checker import LoggedChange
from tests.chaos.oracle import ActionKey
from tests.notifier_support import WebhookReceiver
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.domain.playbooks import Playbook, plan_actions

# Change rules only, on a label a customer reaches at most once and keeps (see oracle.py); two
# rules on one change, so one change's actions are told apart by rule. Staff tasks: no consent,
# channel, quiet hours or caps decide whether they are sent.
PLAYBOOK = """playbook_version: "chaos"
rules:
  - id: vip-account-manager
    when: {dimension: value_tier, from: "*", to: VIP}
    action: {kind: account_manager_assignment, priority: 1, owner: "queue:am", due_in: 2d}
  - id: vip-welcome-revisit
    when: {dimension: value_tier, from: "*", to: VIP}
    action: {kind: revisit, priority: 2, owner: "queue:care", due_in: 3d}
"""

RESET = -1  # `_handle`'s answer for "reset the connection instead of answering"
FAULTS = ("ok", "error", "timeout", "latency", "reset")
FAILURES = frozenset({"error", "timeout", "reset"})


def write_playbook(directory: Path) -> tuple[Path, Playbook]:
    path = directory / "chaos-playbook.yaml"
    path.write_text(PLAYBOOK)
    return path, load_playbook(path)


@dataclass
class Attempt:
    at: float  # wall clock
    fault: str  # what the receiver did (FAULTS)


@dataclass
class ChaosReceiver(WebhookReceiver):
    """A receiver that answers each webhook POST with a fault drawn (seeded) from `mix`, by
    weight: `ok` (2xx, accepted), `error` (500), `timeout` (no answer for `hang_s`), `latency`
    (`latency_s`, then accepted), `reset` (half a status line, then a TCP reset). Every attempt
    is noted in `tried` by webhook-id; `accepted` (the base class) holds only 2xx answers.
    `mix` may be changed while it runs (phases of a scenario). A `doomed` share of the
    webhook-ids (by a hash of the id) gets only the mix's failures while it has any, so some
    deliveries reach their attempt bound whatever the order of the requests."""

    mix: dict[str, float] = field(default_factory=lambda: {"ok": 1.0})
    seed: int = 0
    latency_s: float = 10.0
    hang_s: float = 60.0
    doomed: float = 0.0
    tried: dict[str, list[Attempt]] = field(default_factory=dict)
    _rnd: random.Random = field(default_factory=random.Random)
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rnd = random.Random(self.seed)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await super()._serve(reader, writer)
        finally:
            self._connections.discard(task)

    async def stop(self) -> None:
        """Also end the connections still held (a `timeout` answer sleeps for long)."""
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await super().stop()

    def is_doomed(self, webhook_id: str) -> bool:
        return hashlib.sha256(webhook_id.encode()).digest()[0] < self.doomed * 256

    def draw(self, webhook_id: str) -> str:
        mix = self.mix
        if FAILURES & mix.keys() and self.is_doomed(webhook_id):
            mix = {f: w for f, w in mix.items() if f in FAILURES}
        faults = list(mix)
        return self._rnd.choices(faults, weights=[mix[f] for f in faults])[0]

    def tries(self) -> dict[str, list[Attempt]]:
        while True:  # the receiver's thread may add an entry while we copy
            try:
                return {k: list(v) for k, v in self.tried.items()}
            except RuntimeError:
                continue

    def faults(self) -> Counter[str]:
        return Counter(a.fault for tries in self.tries().values() for a in tries)

    async def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        wid = headers.get("webhook-id")
        if method != "POST" or path == "/v1/events" or wid is None:
            return await super()._handle(method, path, headers, body)
        fault = self.draw(wid)
        self.tried.setdefault(wid, []).append(Attempt(time.time(), fault))
        if fault == "error":
            self.attempts += 1
            return 500
        if fault == "timeout":
            self.attempts += 1
            await asyncio.sleep(self.hang_s)  # the sender gave up long before
            return 500
        if fault == "reset":
            self.attempts += 1
            return RESET
        if fault == "latency":
            await asyncio.sleep(self.latency_s)
        return await super()._handle(method, path, headers, body)

    async def _respond(self, writer: asyncio.StreamWriter, status: int) -> None:
        if status != RESET:
            await super()._respond(writer, status)
            return
        writer.write(b"HTTP/1.1 200")
        await writer.drain()
        sock = writer.transport.get_extra_info("socket")
        if sock is not None:  # linger 0: close sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


@dataclass
class ActionVerdict:
    expected: int = 0  # actions the oracle expects
    delivered: int = 0  # distinct webhook-ids accepted
    redeliveries: int = 0  # the same webhook-id accepted again
    duplicate: int = 0
    missing: int = 0
    unexpected: int = 0
    notes: list[str] = field(default_factory=list)


def implied_ids(changes: Iterable[LoggedChange], playbook: Playbook) -> dict[str, ActionKey]:
    """The action ids the published changes imply (by the notifier's planner), with their
    (customer, rule)."""
    out: dict[str, ActionKey] = {}
    for c in changes:
        for p in plan_actions(
            playbook,
            trigger_event_id=c.change_id,
            dimension=c.dimension,
            from_label=c.from_label,
            to_label=c.to_label,
            change_reason=c.cause,
            customer_id=c.customer_id,
        ):
            out[p.action_id] = (c.customer_id, p.rule_id)
    return out


def judge_actions(
    receiver: WebhookReceiver, expected: Mapping[ActionKey, int], implied: Mapping[str, ActionKey]
) -> ActionVerdict:
    """What the receiver accepted against the oracle's actions and the published changes."""
    verdict = ActionVerdict(expected=sum(expected.values()))
    accepted = {wid: list(got) for wid in receiver.ids() if (got := receiver.accepted[wid])}
    by_action: Counter[ActionKey] = Counter()
    for wid, got in accepted.items():
        verdict.redeliveries += len(got) - 1
        named = {(r.body["data"]["customer_id"], r.body["data"]["rule_id"]) for r in got}
        if len(named) > 1 or any(r.body["id"] != wid for r in got):
            verdict.duplicate += 1
            verdict.notes.append(f"webhook-id {wid} carried {sorted(named)}")
        key = next(iter(named))
        by_action[key] += 1
        if wid not in implied:
            verdict.unexpected += 1
            verdict.notes.append(f"webhook-id {wid} ({key}) implied by no published change")
    verdict.delivered = len(accepted)
    for key in expected.keys() | by_action.keys():
        want, got_n = expected.get(key, 0), by_action.get(key, 0)
        if got_n > want > 0:
            verdict.duplicate += got_n - want
            verdict.notes.append(f"{key}: {got_n} distinct webhook-ids, {want} expected")
        elif got_n > want:
            verdict.unexpected += got_n
            verdict.notes.append(f"{key}: {got_n} delivered, none expected")
        elif got_n < want:
            verdict.missing += want - got_n
            verdict.notes.append(f"{key}: {got_n} delivered, {want} expected")
    never = set(implied) - set(accepted)
    if never and not verdict.missing:  # counted once: a missing action is both
        verdict.missing += len(never)
        verdict.notes.append(f"implied, never accepted: {sorted(never)[:3]}")
    return verdict
