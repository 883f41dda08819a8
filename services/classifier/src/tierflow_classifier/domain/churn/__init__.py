"""Churn risk and customer value: BG/NBD / MBG/NBD purchases, Gamma-Gamma spend, scoring.

Pure: arrays and dataclasses in, arrays and dataclasses out. Fitting lives in ``fit``,
per-customer scoring (O(1) from sufficient statistics) in ``score``.
"""

from tierflow_classifier.domain.churn.bgnbd import BgNbdFit, BgNbdParams
from tierflow_classifier.domain.churn.fit import FittedModel, fit_churn_weights, fit_model
from tierflow_classifier.domain.churn.gamma_gamma import GammaGammaParams
from tierflow_classifier.domain.churn.score import (
    ChurnConfig,
    ChurnLevels,
    ChurnScore,
    ChurnWeights,
    CustomerStats,
    ServiceSignals,
    score_customer,
)

__all__ = [
    "BgNbdFit",
    "BgNbdParams",
    "ChurnConfig",
    "ChurnLevels",
    "ChurnScore",
    "ChurnWeights",
    "CustomerStats",
    "FittedModel",
    "GammaGammaParams",
    "ServiceSignals",
    "fit_churn_weights",
    "fit_model",
    "score_customer",
]
