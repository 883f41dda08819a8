"""`tierflow customers ...` and `tierflow override ...`: look customers up, search and export
them, and override a label, through the classifier's API (the same URL and key conventions as
`tierflow rules`, whose request helpers these commands share)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress
from rich.table import Table

from tierflow_common.cli_rules import (
    KeyOption,
    UrlOption,
    _base,
    _call,
    _headers,
    _open,
    _show_problem,
    console,
)

customers_app = typer.Typer(
    help="Customers as the classifier sees them: get one, search, export", no_args_is_help=True
)
override_app = typer.Typer(
    help="Manual overrides of a customer's label (operate role)", no_args_is_help=True
)

Opt = Annotated[str | None, typer.Option(show_default=False)]
Q = Annotated[str | None, typer.Option("--q", help="Customer-id prefix", show_default=False)]
Labels = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        help="dimension:label; repeat (OR within a dimension, AND across)",
        show_default=False,
    ),
]


def _filters(
    q: str | None, label: list[str] | None, bounds: dict[str, str | None]
) -> list[tuple[str, str]]:
    params = [("q", q)] if q else []
    params += [("label", item) for item in label or ()]
    params += [(name, value) for name, value in bounds.items() if value is not None]
    return params


def _query(params: list[tuple[str, Any]]) -> str:
    return urllib.parse.urlencode(params) if params else ""


@customers_app.command("get")
def get(
    customer_id: Annotated[str, typer.Argument(help="The customer id")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO time: the classes then, and why")
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """A customer's classes with reasons (or as of a past time), criteria and scores."""
    path = urllib.parse.quote(customer_id, safe="")
    suffix = f"?{_query([('as_of', as_of)])}" if as_of else ""
    found = _call("GET", f"{_base(url)}/v1/customers/{path}{suffix}", key=key)
    table = Table(title=f"{customer_id}" + (f" as of {as_of}" if as_of else ""))
    for column in ("dimension", "label", "since", "reason"):
        table.add_column(column)
    for name, d in found["dimensions"].items():
        label = d.get("label", d.get("to"))
        since = d.get("since", d.get("effective_at"))
        table.add_row(name, str(label), str(since), str(d.get("reason", "")))
    console.print(table)
    if "features" in found:
        f = found["features"]
        console.print(
            f"spend {f['net_spend_lifetime']}, {f['purchases_lifetime']} purchases, "
            f"last {f['last_purchase_at'] or '-'}"
        )
    if found.get("scores"):
        s = found["scores"]
        console.print(
            f"P(churn) {s['churn_probability']:.3f} ({s['churn_level']}), CLV {s['clv']:.2f}"
        )


@customers_app.command("search")
def search(
    q: Q = None,
    label: Labels = None,
    spend_min: Opt = None,
    spend_max: Opt = None,
    orders_min: Opt = None,
    orders_max: Opt = None,
    last_purchase_from: Opt = None,
    last_purchase_to: Opt = None,
    churn_min: Opt = None,
    churn_max: Opt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    after: Annotated[str | None, typer.Option(help="`next` of the previous page")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The page as JSON")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Customers matching the filters, in id order, a page at a time."""
    bounds = dict(
        spend_min=spend_min,
        spend_max=spend_max,
        orders_min=orders_min,
        orders_max=orders_max,
        last_purchase_from=last_purchase_from,
        last_purchase_to=last_purchase_to,
        churn_min=churn_min,
        churn_max=churn_max,
    )
    params: list[tuple[str, Any]] = [*_filters(q, label, bounds), ("limit", limit)]
    if after:
        params.append(("after", after))
    page = _call("GET", f"{_base(url)}/v1/customers?{_query(params)}", key=key)
    if as_json:
        console.print_json(json.dumps(page))
        return
    table = Table(title=f"{page['total']} customers", title_justify="left")
    for column in ("customer", "spend", "orders", "last purchase", "P(churn)", "labels"):
        table.add_column(column)
    for item in page["items"]:
        c = item["criteria"]
        churn = c["churn_probability"]
        table.add_row(
            item["customer_id"],
            c["net_spend_lifetime"],
            str(c["purchases_lifetime"]),
            str(c["last_purchase_at"] or "-"),
            "-" if churn is None else f"{churn:.3f}",
            " ".join(f"{d}:{v}" for d, v in item["dimensions"].items()),
        )
    console.print(table)
    if page["next"]:
        console.print(f"more: --after {page['next']}")


@customers_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="File to write", dir_okay=False)],
    format: Annotated[str, typer.Option("--format", help="csv or xlsx")] = "csv",
    q: Q = None,
    label: Labels = None,
    spend_min: Opt = None,
    spend_max: Opt = None,
    orders_min: Opt = None,
    orders_max: Opt = None,
    last_purchase_from: Opt = None,
    last_purchase_to: Opt = None,
    churn_min: Opt = None,
    churn_max: Opt = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Every matching customer to a CSV or XLSX file, with a progress bar."""
    bounds = dict(
        spend_min=spend_min,
        spend_max=spend_max,
        orders_min=orders_min,
        orders_max=orders_max,
        last_purchase_from=last_purchase_from,
        last_purchase_to=last_purchase_to,
        churn_min=churn_min,
        churn_max=churn_max,
    )
    params = [("format", format), *_filters(q, label, bounds)]
    target = f"{_base(url)}/v1/customers:export?{_query(params)}"
    with _open("GET", target, None, _headers(key)) as resp:
        status = int(resp.status if hasattr(resp, "status") else resp.code)
        if status >= 300:
            _show_problem(status, json.loads(resp.read() or b"null"))
            raise typer.Exit(1)
        total = int(resp.headers.get("X-Total-Count", "0"))
        # CSV: rows counted as they arrive (one per line after the header); XLSX: bytes.
        rows = format == "csv"
        columns = [BarColumn(), MofNCompleteColumn() if rows else DownloadColumn()]
        with (
            Progress("[progress.description]{task.description}", *columns) as bar,
            out.open("wb") as f,
        ):
            task = bar.add_task(f"{total} customers", total=total if rows else None)
            header_seen = False
            while chunk := resp.read(64 * 1024):
                f.write(chunk)
                if rows:
                    lines = chunk.count(b"\n")
                    if not header_seen and lines:
                        header_seen, lines = True, lines - 1
                    bar.advance(task, lines)
                else:
                    bar.advance(task, len(chunk))
    console.print(f"{total} customers written to {out}")


@override_app.command("set")
def set_override(
    customer_id: Annotated[str, typer.Argument(help="The customer id")],
    dimension: Annotated[str, typer.Argument(help="The dimension, e.g. value_tier")],
    label: Annotated[str, typer.Argument(help="A label of that dimension")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the override)")],
    expires: Annotated[
        str | None, typer.Option("--expires", help="ISO time (with offset) the rules take over")
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Pin a customer's dimension to a label (until --expires, else until cleared)."""
    body: dict[str, Any] = {"dimension": dimension, "label": label, "reason": reason}
    if expires is not None:
        body["expires_at"] = expires
    path = urllib.parse.quote(customer_id, safe="")
    done = _call(
        "POST",
        f"{_base(url)}/v1/customers/{path}/overrides",
        key=key,
        body=json.dumps(body).encode(),
    )
    until = done["expires_at"] or "cleared"
    console.print(
        f"override {done['override_id']} published (event {done['event_id']}): "
        f"{customer_id} {dimension} = {label} until {until}"
    )


@override_app.command("clear")
def clear_override(
    customer_id: Annotated[str, typer.Argument(help="The customer id")],
    dimension: Annotated[str, typer.Argument(help="The overridden dimension")],
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """End the override of a dimension: its rules decide it again at once."""
    path = urllib.parse.quote(customer_id, safe="")
    dim = urllib.parse.quote(dimension, safe="")
    done = _call("DELETE", f"{_base(url)}/v1/customers/{path}/overrides/{dim}", key=key)
    console.print(f"clearing published (event {done['event_id']})")
