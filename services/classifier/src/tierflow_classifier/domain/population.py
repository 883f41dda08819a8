"""Population statistics that some classes are relative to: RFM quintiles and ABC (Pareto) cut
points. Pure: the cut points come from quantile sketches built elsewhere.

ABC: customers are ranked by rolling spend; A = the top spenders who together make the first
`abc_a_share` of all spend (default 80%), B = the next `abc_b_share` (15%), C = the rest. From a
sketch of spend values, the spend share above a value is integrated over the sketch's quantiles
(a Lorenz curve at 1/1000 resolution), which is exact enough for a boundary and mergeable.

When to refresh is the clock's to say (adapters/clock.py `refresh_due`): in production every
`every` of wall time; in replay whenever the watermark has advanced by `step`, and once more
when it stops moving, so the last population is the one "as of" the final watermark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tierflow_classifier.domain.rules import Dimension, RuleSet

# The features computed from the population statistics (domain/features.py).
POPULATION_FEATURES = frozenset({"rfm_r", "rfm_f", "rfm_m", "rfm_fm", "abc_class"})


@dataclass(frozen=True)
class PopulationStats:
    version: int
    computed_at: datetime
    customers: int
    recency_cuts: tuple[float, ...]  # days; lower recency is better
    frequency_cuts: tuple[float, ...]
    monetary_cuts: tuple[float, ...]
    abc_a_min_spend: float
    abc_b_min_spend: float


def quintile(value: float, cuts: Sequence[float], *, lower_is_better: bool = False) -> int:
    """1..5 by which fifth of the population `value` falls in (5 = best)."""
    # At a cut point the value already counts as past it: deadlines land exactly there.
    above = sum(1 for c in cuts if value >= c)
    score = above + 1
    return 6 - score if lower_is_better else score


def score_above(value: float, cuts: Sequence[float]) -> int:
    """1..5 by how many cut points `value` exceeds (5 = best), for frequency and monetary value.

    Ties go to the lower fifth: when more than a fifth of the population shares a value (most
    customers have no order in the rolling window, so several cut points are 0), those
    customers score 1, not 4. Recency, whose crossings are review deadlines, uses `quintile`.
    """
    return 1 + sum(1 for c in cuts if value > c)


def abc_thresholds(
    quantile_values: Sequence[float], a_share: float, b_share: float
) -> tuple[float, float]:
    """Minimum spend for A and for B, from evenly spaced quantiles of the spend distribution."""
    values = sorted(max(v, 0.0) for v in quantile_values)
    total = sum(values)
    if total <= 0:
        return float("inf"), float("inf")
    cumulative = 0.0
    a_min = b_min = values[0]
    found_a = False
    for v in reversed(values):
        cumulative += v
        share = cumulative / total
        if not found_a:
            a_min = v
            if share >= a_share:
                found_a = True
                b_min = v
        else:
            b_min = v
            if share >= a_share + b_share:
                break
    return a_min, b_min


def abc_class(spend: float, stats: PopulationStats) -> str:
    if spend <= 0:
        return "C"
    if spend >= stats.abc_a_min_spend:
        return "A"
    if spend >= stats.abc_b_min_spend:
        return "B"
    return "C"


def population_dimensions(rules: RuleSet) -> tuple[Dimension, ...]:
    """The dimensions whose labels read a population-relative feature (RFM, ABC)."""
    return tuple(
        d
        for d in rules.dimensions
        if d.label_from in POPULATION_FEATURES
        or any(POPULATION_FEATURES.intersection(r.inputs) for r in d.rules)
    )
