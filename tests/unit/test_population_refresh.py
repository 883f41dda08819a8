"""When the population statistics are rebuilt (wall clock, or the replay watermark), and which
customers a new population re-classifies. Pure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from tierflow_classifier.adapters.clock import Clock, EventTimeClock, RefreshPolicy, WallClock
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.classify import Outside, catch_up, classify
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.domain.population import (
    PopulationStats,
    population_dimensions,
    score_above,
)
from tierflow_classifier.domain.population_review import KEEP, Verdict, after_refresh

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "classifier.yaml")
T0 = datetime(1997, 1, 1, 12, tzinfo=UTC)
DAY = timedelta(days=1)

REPLAY = (EventTimeClock(), RefreshPolicy(step=7 * DAY, settle_s=3.0, min_gap_s=1.0))
WALL = (WallClock(), RefreshPolicy(every=timedelta(minutes=10), min_gap_s=1.0))


def due(
    clocked: tuple[Clock, RefreshPolicy],
    now: datetime | None,
    last_at: datetime | None,
    *,
    since_attempt_s: float | None = 60.0,
    steady_s: float = 0.0,
) -> bool:
    clock, policy = clocked
    return clock.refresh_due(
        policy, now=now, last_at=last_at, since_attempt_s=since_attempt_s, steady_s=steady_s
    )


# --- when to refresh ---------------------------------------------------------------------


def test_replay_refreshes_as_soon_as_there_is_a_watermark() -> None:
    assert not due(REPLAY, None, None)
    assert due(REPLAY, T0, None, since_attempt_s=None)


def test_replay_refreshes_each_time_the_watermark_advanced_by_the_step() -> None:
    assert not due(REPLAY, T0 + 6 * DAY, T0)
    assert due(REPLAY, T0 + 7 * DAY, T0)
    assert due(REPLAY, T0 + 400 * DAY, T0)  # however fast the replay ran, one refresh catches up


def test_replay_follows_the_watermark_not_the_wall_clock() -> None:
    # Hours of wall time without the watermark advancing by a step: still due only via settle.
    assert not due(REPLAY, T0 + 2 * DAY, T0, since_attempt_s=36_000.0, steady_s=0.5)


def test_replay_catches_up_to_a_watermark_that_stopped_moving() -> None:
    # The log is drained: the last population must be "as of" the final watermark.
    assert not due(REPLAY, T0 + 2 * DAY, T0, steady_s=2.9)
    assert due(REPLAY, T0 + 2 * DAY, T0, steady_s=3.0)


def test_replay_never_refreshes_when_the_watermark_did_not_advance() -> None:
    # Resending the whole log: the watermark stays put, so the population (and labels) stay.
    assert not due(REPLAY, T0, T0, steady_s=3600.0)
    assert not due(REPLAY, T0 - DAY, T0, steady_s=3600.0)


def test_attempts_are_spaced_by_the_minimum_gap() -> None:
    assert not due(REPLAY, T0 + 30 * DAY, T0, since_attempt_s=0.5)
    assert not due(WALL, T0 + timedelta(hours=2), T0, since_attempt_s=0.5)


def test_wall_clock_refreshes_on_its_cadence() -> None:
    assert due(WALL, T0, None, since_attempt_s=None)
    assert not due(WALL, T0 + timedelta(minutes=9), T0)
    assert due(WALL, T0 + timedelta(minutes=10), T0)
    # Nothing to build from yet: retried at the cadence, not at every poll.
    assert not due(WALL, T0, None, since_attempt_s=5.0)
    assert due(WALL, T0, None, since_attempt_s=600.0)


# --- whom a new population re-classifies ---------------------------------------------------


def stats(version: int = 1, **overrides: object) -> PopulationStats:
    base = PopulationStats(
        version=version,
        computed_at=T0 + 30 * DAY,
        customers=1000,
        recency_cuts=(10.0, 30.0, 90.0, 200.0),
        frequency_cuts=(1.0, 1.0, 2.0, 4.0),
        monetary_cuts=(20.0, 60.0, 150.0, 400.0),
        abc_a_min_spend=300.0,
        abc_b_min_spend=80.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def customer(amounts: list[str], outside: Outside, days: list[int] | None = None) -> CustomerState:
    state: CustomerState | None = None
    for i, amount in enumerate(amounts):
        t = T0 + (days[i] if days else i) * DAY
        meta = EventMeta("shop", f"e{i}", "c", t)
        if state is not None:
            state, _ = catch_up(state, RULES, until=t, outside=outside)
        purchase = Purchase(meta, str(i), Decimal(amount), "USD")
        state, _ = apply(state, purchase, RULES, outside=outside)
    assert state is not None
    return state


def test_the_population_dimensions_are_rfm_and_abc() -> None:
    assert {d.name for d in population_dimensions(RULES)} == {"abc", "rfm"}


def test_a_customer_scored_before_any_population_is_reclassified() -> None:
    state = customer(["100", "100"], Outside())
    assert state.dimensions["rfm"].label == "unscored"
    at = T0 + 3 * DAY
    assert after_refresh(state, RULES, Outside(stats()), at) == Verdict(reclassify_at=at)


def test_labels_the_new_population_keeps_are_left_alone() -> None:
    outside = Outside(stats(1))
    state = customer(["100", "100"], outside)
    at = T0 + 2 * DAY
    assert after_refresh(state, RULES, Outside(stats(2)), at) == KEEP


def test_a_moved_abc_boundary_reclassifies() -> None:
    state = customer(["100", "100"], Outside(stats(1)))
    assert state.dimensions["abc"].label == "B"
    richer = Outside(stats(2, abc_a_min_spend=150.0, abc_b_min_spend=50.0))
    assert after_refresh(state, RULES, richer, T0 + 2 * DAY) == Verdict(reclassify_at=T0 + 2 * DAY)


def test_an_earlier_recency_crossing_brings_the_review_forward() -> None:
    state = customer(["100"], Outside(stats(1)))
    at = T0 + 2 * DAY
    assert state.next_review_at is not None
    sooner = Outside(stats(2, recency_cuts=(5.0, 30.0, 90.0, 200.0)))
    verdict = after_refresh(state, RULES, sooner, at)
    assert verdict == Verdict(review_by=T0 + 5 * DAY)
    assert state.next_review_at > T0 + 5 * DAY


def test_a_customer_ahead_of_the_watermark_is_judged_at_its_own_latest_instant() -> None:
    # Its partition runs ahead of the replay watermark: judging it "back" at the watermark
    # would move its history backwards in time.
    state = customer(["100", "100"], Outside(), days=[0, 20])
    verdict = after_refresh(state, RULES, Outside(stats()), T0 + 10 * DAY)
    assert verdict == Verdict(reclassify_at=T0 + 20 * DAY)


def test_customers_without_a_purchase_are_never_scored() -> None:
    assert after_refresh(CustomerState("nobody"), RULES, Outside(stats()), T0) == KEEP


def test_frequency_and_monetary_ties_fall_to_the_lower_score() -> None:
    # Most customers have no order in the rolling window: several cut points are 0, and those
    # customers are the bottom of the population, not the fourth fifth.
    assert score_above(0.0, (0.0, 0.0, 0.0, 2.0)) == 1
    assert score_above(1.0, (0.0, 0.0, 0.0, 2.0)) == 4
    assert score_above(3.0, (0.0, 0.0, 0.0, 2.0)) == 5
    quiet = customer(["100"], Outside(), days=[0])
    cuts = Outside(stats(frequency_cuts=(0.0, 0.0, 0.0, 2.0), monetary_cuts=(0.0, 0.0, 0.0, 70.0)))
    # 400 days later the purchase has left the 12-month window: F1 M1 with R1 is "lost".
    at = T0 + 400 * DAY
    late, _ = catch_up(quiet, RULES, until=at)
    assert after_refresh(late, RULES, cuts, at) == Verdict(reclassify_at=at)
    scored, _ = classify(late, RULES, at=at, cause="population:1", outside=cuts)
    assert scored.dimensions["rfm"].label == "lost"
