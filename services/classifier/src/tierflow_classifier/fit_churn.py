"""`python -m tierflow_classifier.fit_churn`: fit the churn model on the store's history now.

The classifier also refits on a schedule (CLASSIFIER_CHURN_FIT_INTERVAL_S) and on
POST /v1/models/churn:fit; running classifiers pick the new model up within
CLASSIFIER_CHURN_RELOAD_S and re-score customers in the background.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer

from tierflow_classifier.adapters.churn_store import fit_and_store
from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings

app = typer.Typer(add_completion=False)


@app.command()
def main(
    as_of: Annotated[
        datetime | None, typer.Option(help="Fit on history up to this time (default: now)")
    ] = None,
) -> None:
    async def run() -> int:
        engine = create_engine(DatabaseSettings())
        try:
            at = (as_of or datetime.now(UTC)).astimezone(UTC)
            model = await fit_and_store(engine, at)
        finally:
            await engine.dispose()
        if model is None:
            typer.echo("not enough purchase history to fit a churn model", err=True)
            return 1
        p = model.purchase
        typer.echo(
            f"fitted {model.version} ({model.variant}) on {model.n_customers} customers in "
            f"{model.fit_seconds:.2f}s: r={p.r:.4f} alpha={p.alpha:.4f} a={p.a:.4f} b={p.b:.4f} "
            f"log-likelihood={model.log_likelihood:.2f}"
        )
        report = model.report
        if report is not None and report.holdout is not None:
            h = report.holdout
            typer.echo(
                f"holdout ({h.customers} customers, {report.horizon_days:g}-day horizon, out of "
                f"fold): AUC {h.auc:.4f} (recency alone {h.auc_recency:.4f}), log loss "
                f"{h.log_loss:.4f}, Brier {h.brier:.4f}; calibrated"
            )
        elif report is not None:
            typer.echo(f"prior weights, uncalibrated: {report.fallback}")
        return 0

    raise typer.Exit(asyncio.run(run()))


if __name__ == "__main__":
    app()
