"""`tierflow lag`, `tierflow tail`, `tierflow dlq list|show|redrive`: the broker as operators
see it, through tierflow_common.operations (the console uses the same functions).

They talk to the broker (KAFKA_* settings, TLS/SASL included) and, for lag, to PostgreSQL
(DATABASE_URL; default the embedded server of `tierflow run`), where the services keep the
offsets they have applied. Topic arguments are topic names or the TOPIC_* setting's name
(`customer_events`, `classifier_dlq`, ...); `dlq` commands also take `classifier` / `notifier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer

from tierflow_common.settings import TopicSettings

T = TypeVar("T")

dlq_app = typer.Typer(
    help="Dead letters: what a consumer could not apply, why, and sending it back (redrive)",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line")]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from aiokafka.errors import KafkaError  # noqa: PLC0415
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    from tierflow_common.dead_letters import OperationError  # noqa: PLC0415

    try:
        return asyncio.run(coro)
    except OperationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    except (KafkaError, DBAPIError, OSError, TimeoutError) as exc:
        # Unreachable broker or database: say which, without a traceback.
        typer.echo(f"{type(exc).__name__}: {exc} (check KAFKA_* / DATABASE_URL)", err=True)
        raise typer.Exit(1) from exc


def topic_name(name: str, topics: TopicSettings) -> str:
    """A topic's name from itself or its setting's name (`classifier_dlq`)."""
    aliases = {"classifier": topics.classifier_dlq, "notifier": topics.notifier_dlq}
    field = name.replace("-", "_")
    if field in TopicSettings.model_fields and field not in ("partitions", "replication_factor"):
        return str(getattr(topics, field))
    return aliases.get(name, name)


def _json_line(item: Any) -> str:
    return json.dumps(
        asdict(item), default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)
    )


def lag(
    group: Annotated[
        list[str] | None, typer.Option(help="Only this consumer group (repeatable)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Consumer lag per group, topic and partition: the log end minus the offset the service
    has applied (stored in PostgreSQL with its state; the broker's committed offset for groups
    that store none)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from tierflow_common.operations import consumer_lag  # noqa: PLC0415

    rows = _run(consumer_lag(groups=group))
    if as_json:
        for row in rows:
            typer.echo(_json_line(row))
        return
    table = Table("group", "topic", "partition", "applied", "end", "lag", "from")
    for r in rows:
        committed = "-" if r.committed is None else str(r.committed)
        table.add_row(
            r.group, r.topic, str(r.partition), committed, str(r.end), str(r.lag), r.source
        )
    Console().print(table)
    typer.echo(f"total lag {sum(r.lag for r in rows)}", err=True)


def _record_line(record: Any) -> str:
    value = json.dumps(record.value, separators=(",", ":")) if record.value is not None else "-"
    kind = record.headers.get("ce_type", "-")
    event_id = record.headers.get("ce_id", "-")
    return (
        f"{record.timestamp.isoformat()}  {record.partition}:{record.offset}  {record.key or '-'}"
        f"  {kind}  {event_id}  {value[:300]}"
    )


def tail(
    topic: Annotated[str, typer.Argument(help="Topic, e.g. customer-events or classifier_dlq")],
    customer: Annotated[
        str | None, typer.Option(help="Only this customer's records (its key)")
    ] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this ce_type")] = None,
    event_id: Annotated[str | None, typer.Option("--event-id", help="Only this ce_id")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest to show")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones")] = False,
    as_json: JsonOption = False,
) -> None:
    """The newest records of a topic (oldest of them first), optionally filtered; with
    --follow, then every new matching record as it arrives (Ctrl-C stops)."""
    from tierflow_common.operations import follow_topic, search_topic  # noqa: PLC0415

    name = topic_name(topic, TopicSettings())
    show = _json_line if as_json else _record_line

    async def main() -> None:
        found = await search_topic(
            name, key=customer, type=type_, event_id=event_id, limit=limit, newest_first=True
        )
        for record in reversed(found):
            typer.echo(show(record))
        if follow:
            async for record in follow_topic(name, key=customer, type=type_):
                if event_id is None or record.headers.get("ce_id") == event_id:
                    typer.echo(show(record))

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow
        _run(main())


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[
        str, typer.Argument(help="classifier, notifier or a DLQ topic")
    ] = "classifier",
    limit: Annotated[int, typer.Option(min=1, help="At most this many")] = 50,
    after: Annotated[str | None, typer.Option(help="PARTITION:OFFSET of the last one seen")] = None,
    as_json: JsonOption = False,
) -> None:
    """Dead letters, oldest first: where each came from, the field and the reason."""
    from tierflow_common.operations import dead_letters  # noqa: PLC0415

    letters = _run(dead_letters(topic_name(topic, TopicSettings()), limit=limit, after=after))
    for d in letters:
        if as_json:
            typer.echo(_json_line(d))
            continue
        source = f"{d.source_topic}[{d.source_partition}]@{d.source_offset}"
        typer.echo(
            f"{d.cursor:<10} {d.timestamp.isoformat()}  {d.key or '-'}  "
            f"{d.headers.get('ce_id', '-')}  {source}  {d.field or '-'}: {d.reason}"
        )
    typer.echo(f"{len(letters)} dead letters", err=True)


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="classifier, notifier or a DLQ topic")],
    record: Annotated[str, typer.Argument(help="PARTITION:OFFSET (from `tierflow dlq list`)")],
) -> None:
    """One dead letter in full: the reason, where it came from and the original record."""
    from tierflow_common.operations import dead_letters  # noqa: PLC0415

    name = topic_name(topic, TopicSettings())

    async def find() -> Any:
        after: str | None = None
        while True:
            page = await dead_letters(name, limit=1000, after=after)
            for d in page:
                if d.cursor == record:
                    return d
            if len(page) < 1000:
                return None
            after = page[-1].cursor

    found = _run(find())
    if found is None:
        typer.echo(f"no dead letter {record} on {name}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(json.loads(_json_line(found)), indent=2))


@dlq_app.command("redrive")
def dlq_redrive(
    topic: Annotated[str, typer.Argument(help="classifier, notifier or a DLQ topic")],
    record: Annotated[
        str | None, typer.Argument(help="PARTITION:OFFSET of one dead letter")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of the topic")] = False,
) -> None:
    """Send dead letters back to the topic they came from (after fixing what rejected them).
    Safe to repeat: the consumers dedupe by event id, so nothing is applied twice."""
    from tierflow_common.operations import redrive  # noqa: PLC0415

    name = topic_name(topic, TopicSettings())
    if all_ == (record is not None):
        typer.echo("give one PARTITION:OFFSET or --all", err=True)
        raise typer.Exit(2)
    if record is not None:
        partition, _, offset = record.partition(":")
        if not (partition.isdigit() and offset.isdigit()):
            typer.echo(f"not PARTITION:OFFSET: {record!r}", err=True)
            raise typer.Exit(2)
        result = _run(redrive(name, partition=int(partition), offset=int(offset)))
    else:
        result = _run(redrive(name, all=True))
    typer.echo(f"redriven {result.sent} to {', '.join(result.targets) or '-'}")
