"""What-if through the bootstrap on the in-memory unit of work (tests/fakes): the simulation of
a candidate reports exactly what the review scheduler then publishes once the candidate is put
in force. tests/integration/test_rule_sets.py does the same on
real PostgreSQL and Tansu, through the API."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.fakes import FakeDatabase, FakeUnitOfWork
from tests.support import ROOT
from tests.unit.test_reclassify_service import RULES, TOPICS, wired
from tierflow_classifier.adapters.rules_file import parse_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.service_layer.reclassify import Classifier
from tierflow_classifier.service_layer.simulation import (
    NONE,
    Simulation,
    merge_reports,
    simulate,
)
from tierflow_common.contract import EmittedEvent

NOW = datetime.now(UTC)
CANDIDATE = parse_rules(
    (ROOT / "config" / "classifier.yaml")
    .read_text()
    .replace("vip_spend: 5000 ", "vip_spend: 2000 ")
    .replace("important_spend: 1000\n", "important_spend: 400\n")
)


def customer(i: int) -> CustomerState:
    state: CustomerState | None = None
    for n in range(1 + i % 3):
        at = NOW - timedelta(days=9 - n, minutes=i)
        meta = EventMeta("shop", f"c{i}-o{n}", f"c{i:03d}", at)
        amount = Decimal(100 + 97 * i % 1_500)
        state, _ = apply(state, Purchase(meta, f"c{i}-o{n}", amount, "USD"), RULES, at=at)
    assert state is not None
    return state


def stocked(count: int) -> FakeDatabase:
    db = FakeDatabase()
    for i in range(count):
        state = customer(i)
        db.customers[state.customer_id] = state
    return db


def published(db: FakeDatabase) -> dict[str, Counter[tuple[str, str]]]:
    """Per dimension, the net (from, to) of each customer over the published changes (first
    from, last to, in publishing order; a move and back again is no move)."""
    first: dict[tuple[str, str], str] = {}
    last: dict[tuple[str, str], str] = {}
    for topic, item in db.outbox:
        if topic != TOPICS.classification_changed or not isinstance(item, EmittedEvent):
            continue
        for change in item.data["changes"]:
            key = (item.data["customer_id"], change["dimension"])
            first.setdefault(key, change["from"] or NONE)
            last[key] = change["to"]
    moves: dict[str, Counter[tuple[str, str]]] = {}
    for key, to in last.items():
        if first[key] != to:
            moves.setdefault(key[1], Counter())[(first[key], to)] += 1
    return moves


async def simulate_on_copy(
    db: FakeDatabase, judging: Classifier, after: str = "", until: str | None = None, page: int = 7
) -> Simulation:
    """The candidate simulated on a copy of `db` (the real one runs in a snapshot that writes
    nothing: adapters/snapshot.py; tests/integration/test_rule_sets.py checks that)."""
    async with FakeUnitOfWork(copy.deepcopy(db), joined=True) as uow:
        return await simulate(
            uow,
            judging.basis(),
            base_version=RULES.version,
            candidate_version=CANDIDATE.version,
            as_of=NOW,
            topics=TOPICS,
            dimensions=[d.name for d in CANDIDATE.dimensions],
            page=page,
            after=after,
            until=until,
        )


async def test_a_simulation_reports_what_activation_then_publishes() -> None:
    db = stocked(60)
    wiring = wired(db)
    classifier = wiring.classifier
    # What activating the candidate would put in force, asked before it is.
    judging = copy.copy(classifier)
    judging.put_in_force(CANDIDATE, None, 100.0, 2)
    report = await simulate_on_copy(db, judging)
    assert report.customers == 60
    tiers = report.dimensions["value_tier"]
    assert tiers.changed > 0
    assert sum(sum(row.values()) for row in tiers.matrix.values()) == 60
    simulated = {
        name: Counter(
            {(f, t): n for f, row in moves.matrix.items() for t, n in row.items() if f != t}
        )
        for name, moves in report.dimensions.items()
    }
    simulated = {k: v for k, v in simulated.items() if v}

    classifier.put_in_force(CANDIDATE, None, 100.0, 2)
    while await wiring.scheduler.tick():
        pass
    assert published(db) == simulated
    assert all(s.rule_set_version.startswith(CANDIDATE.version) for s in db.customers.values())


async def test_reports_of_disjoint_shares_merge_into_the_whole() -> None:
    db = stocked(40)
    judging = copy.copy(wired(db).classifier)
    judging.put_in_force(CANDIDATE, None, 100.0, 2)
    ids = sorted(db.customers)

    async def run(after: str = "", until: str | None = None) -> dict[str, object]:
        return (await simulate_on_copy(db, judging, after, until, page=1_000)).as_json()

    whole = await run()
    parts = merge_reports([await run(until=ids[14]), await run(after=ids[14])])
    for key in ("customers", "changes", "care_actions"):
        assert parts[key] == whole[key]
    whole_dimensions = whole["dimensions"]
    assert isinstance(whole_dimensions, dict)
    assert {n: d["matrix"] for n, d in parts["dimensions"].items()} == {
        n: d["matrix"] for n, d in whole_dimensions.items()
    }
