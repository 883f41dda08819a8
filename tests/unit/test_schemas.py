"""The JSON Schemas published under docs/schemas are exactly what the code validates."""

from __future__ import annotations

from tests.unit.test_classification import ROOT
from tierflow_common.contract.schemas import contract_schemas, render


def test_published_schemas_match_the_models() -> None:
    for name, schema in contract_schemas().items():
        published = ROOT / "docs" / "schemas" / name
        assert published.exists(), f"{published} missing: run `make schemas`"
        assert published.read_text() == render(schema), f"{name} is stale: run `make schemas`"
