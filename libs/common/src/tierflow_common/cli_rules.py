"""`tierflow rules ...`: the classifier's rule sets — validate, simulate (what-if), activate,
history, diff — through the classifier's API (like `deliveries` through the notifier's: an
operator needs the URL and a key, not database credentials, and activation reaches every
running classifier process through the database the API writes)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

rules_app = typer.Typer(
    help="Rule sets of the classifier: validate, simulate, activate, history, diff",
    no_args_is_help=True,
)
# Piped (a script, a CI log): wide enough for whole version ids and reasons, not 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=200)
errors = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Classifier base URL (default: $CLASSIFIER_URL, else 127.0.0.1:$CLASSIFIER_PORT)",
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", help="API key (default: $TIERFLOW_API_KEY)", show_default=False),
]
FileArgument = Annotated[Path, typer.Argument(help="A rule-set YAML file", exists=True)]


def _base(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    if os.environ.get("CLASSIFIER_URL"):
        return os.environ["CLASSIFIER_URL"].rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('CLASSIFIER_PORT', '8081')}"


def _headers(key: str | None, content_type: str = "application/json") -> dict[str, str]:
    headers = {"content-type": content_type}
    secret = key or os.environ.get("TIERFLOW_API_KEY")
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    return headers


def _open(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Any:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - the operator's own classifier URL
    try:
        return urllib.request.urlopen(request, timeout=600)  # noqa: S310
    except urllib.error.HTTPError as exc:
        return exc
    except (urllib.error.URLError, OSError) as exc:
        errors.print(f"cannot reach the classifier at {url}: {exc}")
        raise typer.Exit(2) from exc


def _call(
    method: str,
    url: str,
    *,
    key: str | None,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> Any:
    """One request; the decoded JSON body of a 2xx answer, else the problem shown and exit 1."""
    with _open(method, url, body, _headers(key, content_type)) as resp:
        status = int(resp.status if hasattr(resp, "status") else resp.code)
        payload = json.loads(resp.read() or b"null")
    if status >= 300:
        _show_problem(status, payload)
        raise typer.Exit(1)
    return payload


def _show_problem(status: int, payload: Any) -> None:
    if not isinstance(payload, dict):
        errors.print(f"classifier answered {status}: {payload}")
        return
    errors.print(f"[red]{status} {payload.get('title', '')}[/red]: {payload.get('detail', '')}")
    for e in payload.get("errors", ()):
        where = f"line {e.get('line')}, column {e.get('column')}" if e.get("line") else ""
        errors.print(f"  {where}  {e.get('field')}: {e.get('reason')}")


@rules_app.command("validate")
def validate(file: FileArgument, url: UrlOption = None, key: KeyOption = None) -> None:
    """Check a rule set: compiled and type-checked exactly as activation would; problems by
    line and column."""
    found = _call(
        "POST",
        f"{_base(url)}/v1/rules:validate",
        key=key,
        body=file.read_bytes(),
        content_type="application/yaml",
    )
    console.print(f"valid: version {found['version']} (label {found['label']})")


def _matrix_table(name: str, moves: dict[str, Any]) -> Table:
    labels = sorted({*moves["matrix"], *(t for row in moves["matrix"].values() for t in row)})
    table = Table(title=f"{name}: {moves['changed']} would change", title_justify="left")
    table.add_column("from \\ to")
    for label in labels:
        table.add_column(label, justify="right")
    for before in labels:
        row = moves["matrix"].get(before, {})
        cells = []
        for after in labels:
            n = row.get(after, 0)
            text = str(n) if n else "·"
            cells.append(f"[bold]{text}[/bold]" if n and before != after else text)
        table.add_row(before, *cells)
    return table


def show_simulation(report: dict[str, Any], *, everything: bool = False) -> None:
    console.print(
        f"candidate {report['candidate_version']} against {report['base_version']}, "
        f"{report['customers']} customers as of {report['as_of']} "
        f"({report['elapsed_ms'] / 1000:.1f} s)"
    )
    for name, moves in report["dimensions"].items():
        if moves["changed"] or everything:
            console.print(_matrix_table(name, moves))
    if report["care_actions"]:
        care = Table(title="care actions the changes would create", title_justify="left")
        care.add_column("playbook rule")
        care.add_column("actions", justify="right")
        for rule, n in report["care_actions"].items():
            care.add_row(rule, str(n))
        console.print(care)
    if report.get("care_actions_suppressed"):
        shown = ", ".join(f"{k}: {v}" for k, v in report["care_actions_suppressed"].items())
        console.print(f"suppressed by the contact policy: {shown}")


@rules_app.command("simulate")
def simulate(
    file: FileArgument,
    as_of: Annotated[str | None, typer.Option(help="Judge as of this instant (ISO 8601)")] = None,
    rollout_percent: Annotated[float, typer.Option(min=0.01, max=100)] = 100,
    note: Annotated[str, typer.Option(help="Kept with the draft version")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    all_dimensions: Annotated[
        bool, typer.Option("--all", help="Show dimensions that would not change too")
    ] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """What activating the rule set in FILE would change — every customer judged by the same
    code activation runs, nothing written — with a progress bar; the candidate is kept as a
    draft version that `activate` can name."""
    from urllib.parse import urlencode  # noqa: PLC0415

    query = {"rollout_percent": str(rollout_percent), "note": note}
    if as_of:
        query["as_of"] = as_of
    headers = _headers(key, "application/yaml") | {"accept": "application/x-ndjson"}
    target = f"{_base(url)}/v1/rules:simulate?{urlencode(query)}"
    report: dict[str, Any] | None = None
    with (
        _open("POST", target, file.read_bytes(), headers) as resp,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=errors,
            transient=True,
        ) as bar,
    ):
        status = int(resp.status if hasattr(resp, "status") else resp.code)
        if status >= 300:
            bar.stop()
            _show_problem(status, json.loads(resp.read() or b"null"))
            raise typer.Exit(1)
        task = bar.add_task("simulating", total=None)
        for line in resp:
            message = json.loads(line)
            if "progress" in message:
                done = message["progress"]
                bar.update(task, completed=done["customers"], total=done.get("total"))
            elif "result" in message:
                report = message["result"]
            elif "error" in message:
                bar.stop()
                _show_problem(500, message["error"])
                raise typer.Exit(1)
    if report is None:
        errors.print("the classifier ended the simulation without a result")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    show_simulation(report, everything=all_dimensions)
    console.print(
        f"to activate: tierflow rules activate {report['candidate_version']} "
        f"--expected-active {report['base_version']}"
    )


@rules_app.command("activate")
def activate(
    version: Annotated[str, typer.Argument(help="A stored version (from simulate / history)")],
    expected_active: Annotated[
        str | None,
        typer.Option(help="The version you expect to be active (default: the one active now)"),
    ] = None,
    rollout_percent: Annotated[float, typer.Option(min=0.01, max=100)] = 100,
    note: Annotated[str, typer.Option(help="Why (kept with the activation)")] = "",
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Put a version in force in every classifier process, without a restart; customers are
    re-judged in the background. Rollback: activate the earlier version."""
    base = _base(url)
    if expected_active is None:
        current = _call("GET", f"{base}/v1/rules", key=key)["active"]
        expected_active = current["version"] if current else ""
    body = {
        "version": version,
        "expected_active": expected_active,
        "rollout_percent": rollout_percent,
        "note": note,
    }
    done = _call("POST", f"{base}/v1/rules:activate", key=key, body=json.dumps(body).encode())
    share = (
        f"{done['rollout_percent']:g}% of customers (the rest keep {done['previous']})"
        if done["previous"]
        else "every customer"
    )
    console.print(f"activation {done['activation']}: {done['version']} for {share}")


@rules_app.command("history")
def history(
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Versions and activations, newest first."""
    listed = _call("GET", f"{_base(url)}/v1/rules", key=key)
    versions = Table(title="versions", title_justify="left")
    for column in ("version", "label", "status", "created", "by", "note"):
        versions.add_column(column, no_wrap=column == "version")
    for v in listed["versions"]:
        versions.add_row(
            v["version"], v["label"], v["status"], v["created_at"][:19], v["created_by"], v["note"]
        )
    console.print(versions)
    activations = Table(title="activations", title_justify="left")
    for column in ("#", "version", "rollout", "previous", "at", "by", "note"):
        activations.add_column(column, no_wrap=column in ("version", "previous"))
    for a in listed["activations"]:
        activations.add_row(
            str(a["activation"]),
            a["version"],
            f"{a['rollout_percent']:g}%",
            a["previous"] or "",
            a["activated_at"][:19],
            a["activated_by"],
            a["note"],
        )
    console.print(activations)


@rules_app.command("diff")
def diff(
    version: Annotated[str, typer.Argument(help="A stored version")],
    against: Annotated[
        str | None, typer.Option(help="Compare with this version (default: the active one)")
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Where a version differs from another: params, rules and every other setting."""
    from urllib.parse import quote, urlencode  # noqa: PLC0415

    query = f"?{urlencode({'against': against})}" if against else ""
    found = _call("GET", f"{_base(url)}/v1/rules/{quote(version)}/diff{query}", key=key)
    table = Table(title=f"{found['version']} against {found['against']}", title_justify="left")
    for column in ("where", "before", "after"):
        table.add_column(column)
    for d in found["differences"]:
        table.add_row(d["path"], json.dumps(d["before"]), json.dumps(d["after"]))
    console.print(table)
    if not found["differences"]:
        console.print("no differences")
