"""The chaos suite's log checker and oracle on made-up logs and streams: a clean log of chains
passes (redeliveries tolerated), and each fault an exactly-once pipeline must not show —
a change under two ids, one id with two contents, a swap, a lost change — is flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.chaos.log_checker import LoggedChange, check
from tests.chaos.oracle import fold, is_subsequence
from tests.support import ROOT
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_common.contract import EmittedEvent

LABELS = ["regular", "important", "VIP"]
chains = st.dictionaries(
    st.sampled_from([f"c{i}" for i in range(5)]),
    st.lists(st.sampled_from(LABELS), min_size=1, max_size=6),
    min_size=1,
)


def log_of(paths: dict[str, list[str]]) -> list[LoggedChange]:
    out: list[LoggedChange] = []
    for cid, labels in paths.items():
        previous: str | None = None
        for i, label in enumerate(labels):
            out.append(LoggedChange(f"{cid}-{i}", cid, "value_tier", previous, label, f"e{i}"))
            previous = label
    return out


@given(chains, st.data())
def test_a_clean_log_passes_and_redeliveries_are_only_counted(
    paths: dict[str, list[str]], data: st.DataObject
) -> None:
    log = log_of(paths)
    again = data.draw(st.lists(st.sampled_from(log), max_size=3))
    verdict = check([*log, *again])
    assert verdict.ok, verdict.summary()
    assert len(verdict.redelivered) == len(again)
    assert verdict.chains == {(c, "value_tier"): p for c, p in paths.items()}


@given(chains, st.data())
def test_each_fault_is_flagged(paths: dict[str, list[str]], data: st.DataObject) -> None:
    log = log_of(paths)
    i = data.draw(st.integers(0, len(log) - 1))
    victim = log[i]
    fault = data.draw(st.sampled_from(["new_id", "conflict", "drop_first", "swap"]))
    if fault == "new_id":
        bad = [*log, LoggedChange("other", *victim.content[:2], *victim.content[3:], victim.cause)]
        assert check(bad).duplicate_changes == [(victim.change_id, "other")]
    elif fault == "conflict":
        bad = [*log, LoggedChange(victim.change_id, victim.customer_id, "rfm", None, "x", "e")]
        assert check(bad).conflicting == [victim.change_id]
    elif fault == "drop_first":
        # Losing a key's first change leaves its chain without a first assignment.
        firsts = [c for c in log if c.from_label is None and len(paths[c.customer_id]) > 1]
        if not firsts:
            return
        lost = data.draw(st.sampled_from(firsts))
        assert lost.key in check([c for c in log if c != lost]).gaps
    else:
        same = [j for j, c in enumerate(log) if c.key == victim.key]
        if len(same) < 2:
            return
        a, b = same[0], same[1]
        swapped = list(log)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        assert victim.key in check(swapped).reordered


def test_the_oracle_counts_each_acknowledged_event_once() -> None:
    rules = load_rules(ROOT / "config" / "classifier.yaml")
    start = datetime.now(UTC) - timedelta(hours=2)
    events = [
        EmittedEvent(
            id=f"e{i}",
            type="purchase",
            source="shop",
            subject=f"c{i % 3}",
            time=start + timedelta(minutes=i),
            data={"order_id": f"o{i}", "amount": "400.00", "currency": "USD"},
        )
        for i in range(30)
    ]
    expected = fold([*events, *events[:5]], rules)  # a client's retry resends five
    assert expected.applied == 30
    for cid in ("c0", "c1", "c2"):
        want = expected.customer(cid)
        assert (want.purchases, want.net_spend) == (10, Decimal("4000.00"))
        path = expected.tiers[cid]
        assert path[0] == "regular"
        assert is_subsequence([path[-1]], path)
        assert not is_subsequence([path[-1], path[0]], path) or len(set(path)) == 1


def test_a_chain_may_start_from_a_default_whose_first_assignment_is_silent() -> None:
    log = [
        LoggedChange("a1", "c0", "abc", "unscored", "B", "population:2"),
        LoggedChange("a2", "c0", "abc", "B", "A", "population:3"),
    ]
    assert check(log, {"abc": "unscored"}).ok
    assert check(log).gaps == [("c0", "abc")]
    assert check(log, {"abc": "none"}).gaps == [("c0", "abc")]
