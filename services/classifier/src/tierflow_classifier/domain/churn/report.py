"""What a churn fit says about itself: its time split, each weight's origin, holdout metrics.

Stored with the model version (``FittedModel.report``) and served by ``GET /v1/models/churn``,
so whoever reads a score can tell how good the model that made it was on the store's own
history, and which weights the store's data supported and which are priors (and why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tierflow_classifier.domain.churn.calibration import LevelRow


@dataclass(frozen=True)
class TermFit:
    """One weight of the formula: learned from the store's split, or its prior and why."""

    term: str
    weight: float
    prior: float
    learned: bool
    reason: str
    customers_with_signal: int


@dataclass(frozen=True)
class HoldoutMetrics:
    """Out-of-fold on the split: each customer scored by weights and a calibration fitted
    without that customer's label. AUCs of the two baselines on the same customers."""

    customers: int
    churn_rate: float
    auc: float
    auc_uncalibrated: float
    auc_recency: float
    auc_bgnbd: float
    log_loss: float
    log_loss_uncalibrated: float
    brier: float
    brier_uncalibrated: float
    calibration: tuple[LevelRow, ...]


@dataclass(frozen=True)
class FitReport:
    """The split the weights and the calibration were fitted on (days on the store's axis):
    purchases up to ``cutoff_day`` explain, none in (cutoff_day, as_of_day] is the label."""

    horizon_days: float
    cutoff_day: float
    as_of_day: float
    folds: int
    calibrated: bool
    fallback: str | None  # why the weights are the priors and P(churn) is uncalibrated, if so
    terms: tuple[TermFit, ...]
    holdout: HoldoutMetrics | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitReport:
        raw = data.get("holdout")
        holdout = None
        if raw is not None:
            holdout = HoldoutMetrics(
                **{
                    **raw,
                    "calibration": tuple(LevelRow(**row) for row in raw["calibration"]),
                }
            )
        return cls(
            horizon_days=float(data["horizon_days"]),
            cutoff_day=float(data["cutoff_day"]),
            as_of_day=float(data["as_of_day"]),
            folds=int(data["folds"]),
            calibrated=bool(data["calibrated"]),
            fallback=data.get("fallback"),
            terms=tuple(TermFit(**t) for t in data["terms"]),
            holdout=holdout,
        )
