"""The `tierflow` command: run the pipeline, migrate, create topics, manage API keys, read the
audit log, schemas."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from tierflow_common.cli_customers import customers_app, override_app
from tierflow_common.cli_ops import dlq_app, lag, tail
from tierflow_common.cli_rules import rules_app
from tierflow_common.settings import DatabaseSettings

app = typer.Typer(help="tierflow: real-time customer classification pipeline", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys and their roles: ingest, read, operate, admin (stored hashed)",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
deliveries_app = typer.Typer(
    help="Webhook deliveries of care actions: list them, retry dead ones (via the notifier API)",
    no_args_is_help=True,
)
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(rules_app, name="rules")
app.command()(lag)
app.command()(tail)
app.add_typer(dlq_app, name="dlq")
app.add_typer(customers_app, name="customers")
app.add_typer(override_app, name="override")


@contextmanager
def _database() -> Iterator[DatabaseSettings]:
    """DATABASE_URL if set; otherwise the embedded server, started for the command if needed."""
    from tierflow_common.settings import EmbeddedSettings  # noqa: PLC0415

    if os.environ.get("DATABASE_URL"):
        yield DatabaseSettings()
        return
    from tierflow_common.embedded import EmbeddedPostgres  # noqa: PLC0415
    from tierflow_common.embedded.ports import port_is_free  # noqa: PLC0415

    embedded = EmbeddedSettings()
    var = embedded.var_dir.resolve()
    pg = EmbeddedPostgres(
        var / "pgdata", port=embedded.embedded_postgres_port, log_file=var / "log" / "postgres.log"
    )
    if not port_is_free(pg.host, pg.port):
        # `make run` is up: use its server rather than starting a second one.
        yield DatabaseSettings(database_url=pg.url)
        return
    pg.start()
    try:
        yield DatabaseSettings(database_url=pg.url)
    finally:
        pg.stop()


@app.command()
def run(
    classifiers: Annotated[
        int,
        typer.Option(
            min=1,
            help="classifier processes, one consumer group (process i listens on port + 10 x i)",
        ),
    ] = 1,
    notifiers: Annotated[
        int,
        typer.Option(
            min=1,
            help="notifier processes, one consumer group (process i listens on port + 10 x i)",
        ),
    ] = 1,
) -> None:
    """Start PostgreSQL, the broker (embedded unless URLs are set), migrations, topics, services."""
    from tierflow_common.devstack import run_stack  # noqa: PLC0415 - keep CLI start fast

    raise typer.Exit(run_stack(classifiers=classifiers, notifiers=notifiers))


@app.command()
def migrate() -> None:
    """Apply database migrations (to DATABASE_URL, or to the embedded server)."""
    from tierflow_common.db.migrate import upgrade_head  # noqa: PLC0415

    with _database() as db:
        upgrade_head(db)
    typer.echo("migrations applied")


@app.command()
def topics() -> None:
    """Create the pipeline's topics on KAFKA_BOOTSTRAP_SERVERS (idempotent)."""
    from tierflow_common.exceptions import ConfigError  # noqa: PLC0415
    from tierflow_common.kafka import ensure_topics  # noqa: PLC0415
    from tierflow_common.settings import KafkaSettings, TopicSettings  # noqa: PLC0415

    try:
        created = asyncio.run(ensure_topics(KafkaSettings(), TopicSettings()))
    except ConfigError as exc:  # a TLS / SASL setting the broker refuses: the message names it
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for, e.g. 'shop production'")],
    source: Annotated[
        list[str] | None,
        typer.Option(help="A CloudEvents source an ingest key may send ('*' = any); repeatable"),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option(
            help="ingest, read, operate or admin; repeatable (default: ingest, which needs "
            "--source)"
        ),
    ] = None,
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from tierflow_common.auth import Role  # noqa: PLC0415
    from tierflow_common.keys import create_key_sync, key_roles  # noqa: PLC0415

    sources = sorted(set(source or []))
    known = {str(r) for r in Role}
    unknown = [r for r in role or [] if r not in known]
    if unknown:
        typer.echo(f"--role {unknown[0]!r}: not one of {', '.join(sorted(known))}", err=True)
        raise typer.Exit(2)
    try:
        roles = key_roles(role, sources)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    with _database() as db:
        key_id, key = create_key_sync(db, name=name, sources=sources, roles=roles)
    typer.echo(f"key id: {key_id}\nroles: {', '.join(sorted(roles))}")
    if sources:
        typer.echo(f"sources: {', '.join(sources)}")
    typer.echo(f"key: {key}")
    typer.echo("Store the key now: it cannot be shown again.", err=True)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id (takes effect within each service's *_KEYS_REFRESH_S)."""
    from tierflow_common.keys import revoke_key_sync  # noqa: PLC0415

    with _database() as db:
        revoked = revoke_key_sync(db, key_id)
    if not revoked:
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (id, state, roles, sources, name) — never the keys themselves."""
    from tierflow_common.keys import list_keys_sync  # noqa: PLC0415

    with _database() as db:
        rows = list_keys_sync(db)
    for r in rows:
        state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
        roles, sources = ",".join(sorted(r["roles"])), ",".join(r["sources"]) or "-"
        typer.echo(f"{r['key_id']}  {state:<18} {roles:<26} {sources:<20} {r['name']}")


@app.command()
def audit(
    key: Annotated[str | None, typer.Option(help="Only calls made with this key id")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only calls at or after (ISO 8601; UTC if no zone)")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Only calls before")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows")] = 100,
) -> None:
    """The audit log of every service's operate and admin calls, newest first (from the
    database; `GET /v1/audit` on the classifier serves the same rows)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from tierflow_common.audit import read_audit_sync  # noqa: PLC0415

    def aware(at: datetime | None) -> datetime | None:
        return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at

    with _database() as db:
        rows = read_audit_sync(db, key_id=key, since=aware(since), until=aware(until), limit=limit)
    table = Table("when (UTC)", "service", "key", "call", "target", "status")
    for r in rows:
        who = f"{r['key_id']} ({r['key_name']})" if r["key_id"] else "(no valid key)"
        target = ", ".join(f"{k}={v}" for k, v in r["target"].items())
        table.add_row(
            f"{r['at'].astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            r["service"],
            who,
            f"{r['method']} {r['route']}",
            target,
            str(r["status"]),
        )
    Console(width=200).print(table)
    typer.echo(f"{len(rows)} calls", err=True)


def _notifier_url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    if os.environ.get("NOTIFIER_URL"):
        return os.environ["NOTIFIER_URL"].rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('NOTIFIER_PORT', '8082')}"


def _api_key() -> str | None:
    """TIERFLOW_API_KEY, else the development key `tierflow run` keeps in var/."""
    from tierflow_common.settings import EmbeddedSettings  # noqa: PLC0415

    if os.environ.get("TIERFLOW_API_KEY"):
        return os.environ["TIERFLOW_API_KEY"]
    dev = EmbeddedSettings().var_dir / "dev-api-key"
    return dev.read_text().strip() if dev.exists() else None


def _call(method: str, url: str, body: object | None = None) -> tuple[int, Any]:
    """One JSON request to the notifier API: (status, decoded body). Exits if unreachable."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    key = _api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(  # noqa: S310 - the operator's own notifier URL
        url, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")
    except (urllib.error.URLError, OSError) as exc:
        typer.echo(f"cannot reach the notifier at {url}: {exc}", err=True)
        raise typer.Exit(2) from exc


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="Notifier base URL (default: $NOTIFIER_URL, else 127.0.0.1:$NOTIFIER_PORT)"
    ),
]


@deliveries_app.command("list")
def deliveries_list(
    state: Annotated[
        str | None, typer.Option(help="pending, delivered or dead (default: every state)")
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="Only this endpoint")] = None,
    action: Annotated[str | None, typer.Option(help="Only this care action's deliveries")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows")] = 1000,
    url: UrlOption = None,
) -> None:
    """List deliveries (id, endpoint, state, attempts, action, last error), oldest id first.

    Like every `deliveries` command this talks to the notifier's API rather than the database
    (with the key in $TIERFLOW_API_KEY — `read` to list, `operate` to retry — else the
    development key of `tierflow run`):
    tierflow_common cannot import the notifier's service layer (the notifier depends on it, not
    the reverse); the API wakes the endpoint's sender so a retry goes out at once instead of at
    its next poll; and an operator needs only the notifier's URL, not database credentials — a
    retry is only ever sent by a running notifier anyway.
    """
    from urllib.parse import urlencode  # noqa: PLC0415

    base = _notifier_url(url)
    after: str | None = None
    shown = 0
    while shown < limit:
        query = {"state": state, "endpoint": endpoint, "action": action, "after": after}
        params = {k: v for k, v in query.items() if v is not None}
        params["limit"] = str(min(1000, limit - shown))
        status, page = _call("GET", f"{base}/v1/deliveries?{urlencode(params)}")
        if status != 200:
            typer.echo(f"notifier answered {status}: {page}", err=True)
            raise typer.Exit(1)
        for d in page["items"]:
            error = (d.get("last_error") or "")[:60]
            typer.echo(
                f"{d['delivery_id']}  {d['endpoint']:<16} {d['state']:<9} {d['attempts']:>3}  "
                f"{d['action_id']}  {error}"
            )
        shown += len(page["items"])
        after = page.get("next")
        if not after:
            break
    typer.echo(f"{shown} deliveries", err=True)


@deliveries_app.command("retry")
def deliveries_retry(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Delivery ids (default: every dead delivery)")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Only dead deliveries to this endpoint")
    ] = None,
    url: UrlOption = None,
) -> None:
    """Send dead deliveries again with a fresh attempt budget (same webhook-id, so receivers
    that dedupe see each action once). Without ids: every dead delivery (of --endpoint)."""
    base = _notifier_url(url)
    if not ids:
        status, body = _call("POST", f"{base}/v1/deliveries:retry-dead", {"endpoint": endpoint})
        if status != 200:
            typer.echo(f"notifier answered {status}: {body}", err=True)
            raise typer.Exit(1)
        typer.echo(f"retried {body['retried']} dead deliveries")
        return
    failed = 0
    for delivery_id in ids:
        status, body = _call("POST", f"{base}/v1/deliveries/{delivery_id}/retry")
        if status == 200:
            typer.echo(f"retried {delivery_id}")
        else:
            failed += 1
            typer.echo(f"{delivery_id}: {body.get('detail', body) if body else status}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Directory to write into")] = Path("docs/schemas"),
    asyncapi: Annotated[
        Path | None,
        typer.Option(help="Where the AsyncAPI document goes (default: asyncapi.yaml beside OUT)"),
    ] = None,
) -> None:
    """Write the JSON Schemas of the event contract and its AsyncAPI 3.0 document."""
    from tierflow_common.contract.asyncapi import write_asyncapi  # noqa: PLC0415
    from tierflow_common.contract.schemas import write_schemas  # noqa: PLC0415

    for path in write_schemas(out):
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {write_asyncapi(asyncapi or out.parent / 'asyncapi.yaml')}")


if __name__ == "__main__":
    app()
