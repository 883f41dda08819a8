"""The console's classifier API on the real broker and PostgreSQL: search with label and range
filters, CSV and XLSX exports of the same customers, manual overrides travelling as events and
expiring by themselves, and the distribution over time."""

from __future__ import annotations

import asyncio
import csv
import io
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from typer.testing import CliRunner, Result

from tests.access import api_key, app_client, bearer
from tests.integration.helpers import (
    classifier_client,
    eventually,
    produce,
    purchase_event,
    served,
)
from tests.support import ROOT, unique
from tierflow_classifier.adapters.customer_search import Scoring, walk
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.bootstrap import create_app
from tierflow_classifier.domain.classify import rule_set_churn_config
from tierflow_classifier.domain.customer_filter import CustomerFilter, parse_filter
from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.auth import Role
from tierflow_common.cli import app as cli
from tierflow_common.contract import EmittedEvent
from tierflow_common.db.engine import create_engine
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)

pytestmark = pytest.mark.integration

RULES = load_rules(ROOT / "config" / "classifier.yaml")
CHURN = rule_set_churn_config(RULES)

NOW = datetime.now(UTC)
# (customer, purchase amounts, days ago of the last purchase, opens a complaint)
CUSTOMERS: list[tuple[str, list[str], int, bool]] = [
    ("acme-01", ["300.00"], 1, False),
    ("acme-02", ["700.00", "600.00"], 2, False),
    ("acme-03", ["1500.00"], 3, True),
    ("acme-04", ["250.50", "250.50", "600.00"], 4, False),
    ("acme-05", ["2500.00"], 5, False),
    ("bolt-01", ["1200.00"], 6, False),
    ("bolt-02", ["90.00"], 7, True),
    ("bolt-03", ["999.99"], 8, False),
]


def events() -> list[EmittedEvent]:
    out: list[EmittedEvent] = []
    for cid, amounts, days, complains in CUSTOMERS:
        last = NOW - timedelta(days=days)
        for n, amount in enumerate(amounts):
            at = last - timedelta(hours=len(amounts) - 1 - n)
            out.append(purchase_event(f"{cid}-o{n}", cid, amount, time=at))
        if complains:
            out.append(
                EmittedEvent(
                    id=f"{cid}-t1",
                    type="interaction",
                    source="desk",
                    subject=cid,
                    time=NOW - timedelta(hours=1),  # open, not yet overdue
                    data={"kind": "complaint", "complaint_id": f"{cid}-t1"},
                )
            )
    out.append(
        EmittedEvent(
            id="acme-01-p",
            type="profile",
            source="crm",
            subject="acme-01",
            time=NOW - timedelta(days=1),
            data={"name": "Li Wei", "contacts": {"email": "li@example.com"}},
        )
    )
    return out


def spend(cid: str) -> Decimal:
    return sum(
        (Decimal(a) for c, amounts, _, _ in CUSTOMERS if c == cid for a in amounts), Decimal(0)
    )


async def every_event_applied(client: httpx.AsyncClient) -> None:
    complainers = {c for c, _, _, complains in CUSTOMERS if complains}
    await eventually(
        lambda: client.get("/v1/customers"),
        lambda r: (
            r.status_code == 200
            and r.json()["total"] == len(CUSTOMERS)
            and sum(i["criteria"]["purchases_lifetime"] for i in r.json()["items"])
            == sum(len(a) for _, a, _, _ in CUSTOMERS)
            and all(
                i["dimensions"]["problem"] != "none"
                for i in r.json()["items"]
                if i["customer_id"] in complainers
            )
        ),
        what="every event applied",
    )


@pytest.fixture
async def classifier(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    async with classifier_client(
        kafka_settings, database, topics, distribution_snapshot_s=0.5
    ) as client:
        await produce(kafka_settings, topics.customer_events, events())
        await every_event_applied(client)
        yield client


async def all_pages(client: httpx.AsyncClient, params: dict[str, Any]) -> tuple[list[Any], int]:
    items: list[Any] = []
    after = None
    while True:
        resp = await client.get(
            "/v1/customers", params={**params, "limit": 2, **({"after": after} if after else {})}
        )
        assert resp.status_code == 200, resp.text
        page = resp.json()
        items += page["items"]
        after = page["next"]
        if after is None:
            return items, page["total"]


async def test_search_by_labels_and_ranges_returns_exactly_the_matching_customers(
    classifier: httpx.AsyncClient,
) -> None:
    # "important" (>= 1000 in the window) with no complaint (the default label, held by
    # customers without a label row), 1000..2000 spent, a last purchase within 6 days.
    params = {
        "label": ["value_tier:important", "value_tier:VIP", "problem:none"],
        "spend_min": "1000",
        "spend_max": "2000",
        "last_purchase_from": (NOW - timedelta(days=6, hours=1)).isoformat(),
        "last_purchase_to": NOW.date().isoformat(),
    }
    items, total = await all_pages(classifier, params)
    expected = [
        cid
        for cid, _, days, complains in CUSTOMERS
        if Decimal(1000) <= spend(cid) <= Decimal(2000) and days <= 6 and not complains
    ]
    assert expected == ["acme-02", "acme-04", "bolt-01"]
    assert [i["customer_id"] for i in items] == expected
    assert total == len(expected)
    row = items[0]
    assert row["criteria"]["net_spend_lifetime"] == "1300"
    assert row["criteria"]["purchases_lifetime"] == 2
    assert row["dimensions"]["value_tier"] == "important"
    assert row["dimensions"]["problem"] == "none"

    # A prefix, an order range, and the complaint label (a stored one).
    items, total = await all_pages(
        classifier, {"q": "acme", "orders_max": "1", "label": "problem:open_complaint"}
    )
    assert [i["customer_id"] for i in items] == ["acme-03"]
    acme = await classifier.get("/v1/customers", params={"q": "acme-0", "limit": 50})
    assert [i["customer_id"] for i in acme.json()["items"]] == [f"acme-0{i}" for i in range(1, 6)]
    profile = acme.json()["items"][0]["profile"]
    assert profile == {"name": "Li Wei", "contacts": {"email": "li@example.com"}}
    # No churn model yet: nobody has a churn probability, so a churn bound selects nobody.
    nobody = await classifier.get("/v1/customers", params={"churn_min": "0"})
    assert nobody.json() == {"items": [], "next": None, "total": 0}


def matches(row: dict[str, Any], params: dict[str, Any]) -> bool:
    """The search's rules, written out for a row of the unfiltered search."""
    c, dims = row["criteria"], row["dimensions"]
    wanted: dict[str, set[str]] = {}
    for item in params.get("label", []):
        dimension, _, label = item.partition(":")
        wanted.setdefault(dimension, set()).add(label)
    spend, orders = Decimal(c["net_spend_lifetime"]), c["purchases_lifetime"]
    return (
        all(dims[d] in labels for d, labels in wanted.items())
        and ("spend_min" not in params or spend >= Decimal(params["spend_min"]))
        and ("spend_max" not in params or spend <= Decimal(params["spend_max"]))
        and ("orders_min" not in params or orders >= int(params["orders_min"]))
        and ("orders_max" not in params or orders <= int(params["orders_max"]))
        and row["customer_id"].startswith(params.get("q", ""))
    )


async def test_random_filters_select_what_the_rules_say(classifier: httpx.AsyncClient) -> None:
    everyone, _ = await all_pages(classifier, {})
    assert len(everyone) == len(CUSTOMERS)
    labels = sorted({f"{d}:{v}" for row in everyone for d, v in row["dimensions"].items()})

    async def check(params: dict[str, Any]) -> None:
        resp = await classifier.get("/v1/customers", params={**params, "limit": 1000})
        if resp.status_code == 422:  # a minimum above a maximum
            assert {e["field"] for e in resp.json()["errors"]} <= {"spend_max", "orders_max"}
            return
        found = [i["customer_id"] for i in resp.json()["items"]]
        expected = [r["customer_id"] for r in everyone if matches(r, params)]
        assert found == expected, params
        assert resp.json()["total"] == len(expected)

    # Every label alone, and with each other label of its dimension (OR)...
    for label in labels:
        await check({"label": [label]})
        dimension = label.partition(":")[0]
        for other in labels:
            if other != label and other.startswith(f"{dimension}:"):
                await check({"label": [label, other]})
    # ... then random combinations with the ranges and the prefix.
    rng = random.Random(20261201)
    for _ in range(40):
        params: dict[str, Any] = {"label": rng.sample(labels, rng.randint(0, 3))}
        for name, values in (
            ("spend_min", ["0", "500", "1000.5", "1301"]),
            ("spend_max", ["999.99", "1500", "3000"]),
            ("orders_min", ["1", "2", "3"]),
            ("orders_max", ["1", "2"]),
            ("q", ["acme", "bolt-0", "acme-0"]),
        ):
            if rng.random() < 0.4:
                params[name] = rng.choice(values)
        await check(params)


async def test_a_bad_parameter_is_a_problem_naming_it(classifier: httpx.AsyncClient) -> None:
    for params, field in [
        ({"spend_min": "lots"}, "spend_min"),
        ({"label": "value_tier:gold"}, "label"),
        ({"limit": "5000"}, "limit"),
        ({"last_purchase_to": "soon"}, "last_purchase_to"),
    ]:
        resp = await classifier.get("/v1/customers", params=params)
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in resp.json()["errors"]] == [field]
    resp = await classifier.get("/v1/customers:export", params={"format": "pdf"})
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json()["errors"]] == ["format"]


async def test_csv_and_xlsx_exports_hold_the_searched_customers(
    classifier: httpx.AsyncClient,
) -> None:
    params = {"label": ["value_tier:important"], "orders_min": "1"}
    items, total = await all_pages(classifier, params)
    assert total == 5
    expected = {
        i["customer_id"]: (i["criteria"]["net_spend_lifetime"], i["dimensions"]) for i in items
    }

    resp = await classifier.get("/v1/customers:export", params={**params, "format": "csv"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["x-total-count"] == str(total)
    disposition = resp.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="customers-')
    assert disposition.endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    got = {r["customer_id"]: r for r in rows}
    assert list(got) == list(expected)
    for cid, (net, dims) in expected.items():
        assert got[cid]["net_spend_lifetime"] == net
        assert {d: got[cid][d] for d in dims} == dims
    assert got["acme-02"]["purchases_lifetime"] == "2"

    resp = await classifier.get("/v1/customers:export", params={**params, "format": "xlsx"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert resp.headers["x-total-count"] == str(total)
    book = openpyxl.load_workbook(io.BytesIO(resp.content), read_only=True)
    sheet_rows = list(book.active.iter_rows(values_only=True))
    header, body = list(sheet_rows[0]), sheet_rows[1:]
    assert header == list(rows[0].keys())
    sheet = {r[0]: dict(zip(header, r, strict=True)) for r in body}
    assert list(sheet) == list(expected)
    for cid, (net, dims) in expected.items():
        assert Decimal(str(sheet[cid]["net_spend_lifetime"])) == Decimal(net)
        assert {d: sheet[cid][d] for d in dims} == dims


async def test_an_export_reads_every_page_of_its_cursor(
    classifier: httpx.AsyncClient, database: DatabaseSettings
) -> None:
    """Pages of two: the states are loaded between reads of the export's cursor."""
    items, _ = await all_pages(classifier, {"q": "acme"})
    f = parse_filter({"q": ["acme"]}, {d.name: None for d in RULES.dimensions})
    assert isinstance(f, CustomerFilter)
    defaults = {d.name: d.default for d in RULES.dimensions}
    engine = create_engine(database)
    try:
        async with engine.connect() as conn:
            walked = [
                r
                async for page in walk(conn, f, defaults, Scoring(None, CHURN, None), page=2)
                for r in page
            ]
    finally:
        await engine.dispose()
    assert [r.state.customer_id for r in walked] == [i["customer_id"] for i in items]
    assert [str(r.state.purchases_lifetime) for r in walked] == [
        str(i["criteria"]["purchases_lifetime"]) for i in items
    ]


async def label_of(client: httpx.AsyncClient, cid: str, dimension: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/customers/{cid}")
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()["dimensions"][dimension]
    return found


async def causes(client: httpx.AsyncClient, cid: str) -> list[tuple[str, str, str]]:
    resp = await client.get(f"/v1/customers/{cid}/history", params={"dimension": "value_tier"})
    return [(c["cause"], c["from"], c["to"]) for c in resp.json()["changes"]]


async def test_an_override_flows_through_the_classifier_and_expires_by_itself(
    classifier: httpx.AsyncClient, database: DatabaseSettings
) -> None:
    assert (await label_of(classifier, "acme-01", "value_tier"))["label"] == "regular"
    reader = await api_key(database, {Role.READ}, name="read only")
    body = {"dimension": "value_tier", "label": "VIP", "reason": "key account"}
    # A new key is known to the app within CLASSIFIER_KEYS_REFRESH_S.
    denied = await eventually(
        lambda: classifier.post(
            "/v1/customers/acme-01/overrides", json=body, headers=bearer(reader)
        ),
        lambda r: r.status_code != 401,
        what="the read key known",
    )
    assert denied.status_code == 403
    for bad, field in [
        ({**body, "dimension": "tier"}, "dimension"),
        ({**body, "label": "gold"}, "label"),
        ({**body, "expires_at": (NOW - timedelta(minutes=1)).isoformat()}, "expires_at"),
        ({**body, "reason": ""}, "reason"),
    ]:
        resp = await classifier.post("/v1/customers/acme-01/overrides", json=bad)
        assert resp.status_code == 422, resp.text
        assert [e["field"] for e in resp.json()["errors"]] == [field]
    unknown = await classifier.post("/v1/customers/nobody/overrides", json=body)
    assert unknown.status_code == 404

    expires = datetime.now(UTC) + timedelta(seconds=4)
    resp = await classifier.post(
        "/v1/customers/acme-01/overrides", json={**body, "expires_at": expires.isoformat()}
    )
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert set(out) == {
        "override_id",
        "event_id",
        "customer_id",
        "dimension",
        "label",
        "expires_at",
    }
    assert (out["customer_id"], out["dimension"], out["label"]) == ("acme-01", "value_tier", "VIP")
    oid = out["override_id"]

    tier = await eventually(
        lambda: label_of(classifier, "acme-01", "value_tier"),
        lambda t: t["label"] == "VIP",
        what="override applied",
    )
    assert tier["reason"] == "override"
    override = tier["explanation"]["override"]
    assert override["override_id"] == oid
    assert override["label"] == "VIP"
    assert override["reason"] == "key account"
    assert override["by"].startswith("test client")
    assert datetime.fromisoformat(override["expires_at"]) == expires
    assert (f"override:{oid}", "regular", "VIP") in await causes(classifier, "acme-01")

    # At expires_at the review scheduler gives the dimension back to its rules.
    back = await eventually(
        lambda: label_of(classifier, "acme-01", "value_tier"),
        lambda t: t["label"] == "regular",
        timeout=30,
        what="override expired",
    )
    assert back["reason"] != "override"
    assert (f"override_expired:{oid}", "VIP", "regular") in await causes(classifier, "acme-01")

    # Without an expiry, until cleared.
    resp = await classifier.post("/v1/customers/bolt-02/overrides", json=body)
    assert resp.status_code == 202
    second = resp.json()["override_id"]
    await eventually(
        lambda: label_of(classifier, "bolt-02", "value_tier"), lambda t: t["label"] == "VIP"
    )
    cleared = await classifier.delete("/v1/customers/bolt-02/overrides/value_tier")
    assert cleared.status_code == 202
    assert set(cleared.json()) == {"event_id"}
    await eventually(
        lambda: label_of(classifier, "bolt-02", "value_tier"),
        lambda t: t["label"] == "regular",
        what="override cleared",
    )
    assert (f"override_cleared:{second}", "VIP", "regular") in await causes(classifier, "bolt-02")

    # The audit log has the calls, the denied one included.
    audit = (await classifier.get("/v1/audit")).json()["items"]
    routes = [(a["method"], a["route"], a["status"]) for a in audit]
    assert ("POST", "/v1/customers/{customer_id}/overrides", 403) in routes
    assert ("POST", "/v1/customers/{customer_id}/overrides", 202) in routes
    assert ("DELETE", "/v1/customers/{customer_id}/overrides/{dimension}", 202) in routes


async def test_the_distribution_is_kept_over_time(classifier: httpx.AsyncClient) -> None:
    now = await classifier.get("/v1/stats/distribution")
    history = await eventually(
        lambda: classifier.get("/v1/stats/distribution/history"),
        lambda r: (
            len(r.json()["snapshots"]) >= 2
            and r.json()["snapshots"][-1]["dimensions"] == now.json()
        ),
        what="two snapshots of the settled distribution",
    )
    snapshots = history.json()["snapshots"]
    times = [datetime.fromisoformat(s["at"]) for s in snapshots]
    assert times == sorted(times)
    assert sum(snapshots[-1]["dimensions"]["value_tier"].values()) == len(CUSTOMERS)
    since = (times[-1] + timedelta(microseconds=1)).isoformat()
    later = await classifier.get("/v1/stats/distribution/history", params={"since": since})
    assert all(datetime.fromisoformat(s["at"]) > times[-1] for s in later.json()["snapshots"])
    bad = await classifier.get("/v1/stats/distribution/history", params={"until": "noon"})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["until"]


async def tierflow(*args: str, url: str, key: str) -> Result:
    """The `tierflow` CLI in a thread (it blocks; the classifier serves on this loop)."""
    runner = CliRunner(env={"TIERFLOW_API_KEY": key})
    return await asyncio.to_thread(runner.invoke, cli, [*args, "--url", url])


async def test_the_cli_searches_exports_and_overrides(
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> None:
    app = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        consumer=ConsumerSettings(),
        settings=ClassifierSettings(
            rules_file=ROOT / "config" / "classifier.yaml", group_id=unique("classifier")
        ),
    )
    key = await api_key(database, {Role.READ, Role.OPERATE}, name="cli operator")
    async with (
        app_client(app, database, base_url="http://classifier") as client,
        served(app) as url,
    ):
        await produce(kafka_settings, topics.customer_events, events())
        await every_event_applied(client)
        found = await tierflow(
            "customers",
            "search",
            "--label",
            "value_tier:important",
            "--q",
            "acme",
            url=url,
            key=key,
        )
        assert found.exit_code == 0, found.output
        assert "4 customers" in found.stdout
        for cid in ("acme-02", "acme-03", "acme-04", "acme-05"):
            assert cid in found.stdout

        out = tmp_path / "important.csv"
        exported = await tierflow(
            "customers",
            "export",
            "--format",
            "csv",
            "--out",
            str(out),
            "--label",
            "value_tier:important",
            url=url,
            key=key,
        )
        assert exported.exit_code == 0, exported.output
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert sorted(r["customer_id"] for r in rows) == [
            "acme-02",
            "acme-03",
            "acme-04",
            "acme-05",
            "bolt-01",
        ]

        bad = await tierflow(
            "override", "set", "acme-01", "value_tier", "gold", "--reason", "x", url=url, key=key
        )
        assert bad.exit_code == 1
        assert "label" in bad.output
        done = await tierflow(
            "override",
            "set",
            "acme-01",
            "value_tier",
            "VIP",
            "--reason",
            "key account",
            url=url,
            key=key,
        )
        assert done.exit_code == 0, done.output
        assert "acme-01 value_tier = VIP until cleared" in done.stdout

        async def tier() -> str:
            shown = await tierflow("customers", "get", "acme-01", url=url, key=key)
            return shown.stdout

        shown = await eventually(tier, lambda text: "override" in text, what="override shown")
        assert "VIP" in shown
        then = await tierflow(
            "customers",
            "get",
            "acme-01",
            "--as-of",
            datetime.now(UTC).isoformat(),
            url=url,
            key=key,
        )
        assert then.exit_code == 0, then.output
        assert "as of" in then.stdout
        assert "value_tier" in then.stdout
        cleared = await tierflow("override", "clear", "acme-01", "value_tier", url=url, key=key)
        assert cleared.exit_code == 0, cleared.output
        await eventually(tier, lambda text: "override" not in text, what="override cleared")


async def test_churn_bounds_select_by_the_probability_of_the_model_in_force(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    now = datetime.now(UTC)
    history = []
    for c in range(120):
        # Regular buyers, lapsed buyers and one-timers, so the model has something to learn.
        gap, count, last = 7 + (c % 5) * 20, 1 + c % 6, now - timedelta(days=(c % 4) * 60 + 1)
        history += [
            purchase_event(
                f"h-{c}-{k}",
                f"hist-{c:03d}",
                str(20 + c % 7 * 5),
                time=last - timedelta(days=gap * (count - 1 - k)),
            )
            for k in range(count)
        ]
    async with classifier_client(kafka_settings, database, topics) as client:
        await produce(kafka_settings, topics.customer_events, history)
        await eventually(
            lambda: client.get("/v1/customers", params={"limit": 1000}),
            lambda r: (
                sum(i["criteria"]["purchases_lifetime"] for i in r.json()["items"]) == len(history)
            ),
            timeout=60,
            what="history applied",
        )
        fitted = await client.post("/v1/models/churn:fit")
        assert fitted.status_code == 200, fitted.text
        # The new model re-scores everyone in the background.
        everyone = await eventually(
            lambda: client.get("/v1/customers", params={"limit": 1000}),
            lambda r: all(
                i["criteria"]["churn_probability"] is not None for i in r.json()["items"]
            ),
            timeout=60,
            what="everyone scored",
        )
        rows = everyone.json()["items"]
        assert all(i["criteria"]["clv"] is not None for i in rows)
        probabilities = sorted(i["criteria"]["churn_probability"] for i in rows)
        low, high = probabilities[30], probabilities[90]
        for params in (
            {"churn_min": low},
            {"churn_max": high},
            {"churn_min": low, "churn_max": high},
        ):
            resp = await client.get("/v1/customers", params={**params, "limit": 1000})
            found = [i["customer_id"] for i in resp.json()["items"]]
            expected = [
                i["customer_id"]
                for i in rows
                if params.get("churn_min", 0)
                <= i["criteria"]["churn_probability"]
                <= params.get("churn_max", 1)
            ]
            assert found == expected, params
            assert resp.json()["total"] == len(expected)
        # The churn-risk label and the probability agree (the rule set's levels).
        levels = {
            "low": (0.0, 0.3),
            "medium": (0.3, 0.6),
            "high": (0.6, 0.85),
            "critical": (0.85, 1.0),
        }
        for row in rows:
            lo, hi = levels[row["dimensions"]["churn_risk"]]
            assert lo <= row["criteria"]["churn_probability"] <= hi
