"""Rule-set versions and activations in PostgreSQL (tables `rule_sets`,
`rule_set_activations`): the unit of work's `rule_sets`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_classifier.domain.rule_versions import Activation, StoredRuleSet
from tierflow_common.db.tables import rule_set_activations, rule_sets


def _stored(row: Any) -> StoredRuleSet:
    return StoredRuleSet(
        version=row["version"],
        label=row["label"],
        body=row["body"],
        content=row["content"],
        status=row["status"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        note=row["note"],
    )


def _activation(row: Any) -> Activation:
    return Activation(
        activation=row["activation"],
        version=row["version"],
        previous=row["previous"],
        rollout_percent=float(row["rollout_percent"]),
        activated_at=row["activated_at"],
        activated_by=row["activated_by"],
        note=row["note"],
    )


class SqlRuleSets:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def current(self) -> Activation | None:
        """The activation in force (the latest)."""
        row = (
            (
                await self._conn.execute(
                    select(rule_set_activations)
                    .order_by(rule_set_activations.c.activation.desc())
                    .limit(1)
                )
            )
            .mappings()
            .first()
        )
        return _activation(row) if row is not None else None

    async def activations(self, limit: int) -> list[Activation]:
        rows = await self._conn.execute(
            select(rule_set_activations)
            .order_by(rule_set_activations.c.activation.desc())
            .limit(limit)
        )
        return [_activation(r) for r in rows.mappings()]

    async def get(self, version: str) -> StoredRuleSet | None:
        row = (
            (await self._conn.execute(select(rule_sets).where(rule_sets.c.version == version)))
            .mappings()
            .first()
        )
        return _stored(row) if row is not None else None

    async def versions(self, limit: int) -> list[StoredRuleSet]:
        """The newest versions first."""
        rows = await self._conn.execute(
            select(rule_sets)
            .order_by(rule_sets.c.created_at.desc(), rule_sets.c.version)
            .limit(limit)
        )
        return [_stored(r) for r in rows.mappings()]

    async def add(self, stored: StoredRuleSet) -> bool:
        """Keep a version; False when it is kept already (same content, same id)."""
        result = await self._conn.execute(
            pg_insert(rule_sets)
            .values(
                version=stored.version,
                label=stored.label,
                body=stored.body,
                content=dict(stored.content),
                status=stored.status,
                created_at=stored.created_at,
                created_by=stored.created_by,
                note=stored.note,
            )
            .on_conflict_do_nothing(index_elements=["version"])
        )
        return bool(result.rowcount)

    async def activate(self, activation: Activation) -> bool:
        """Record the activation and set the statuses it implies; False when another
        activation took its number first (then nothing is written)."""
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    insert(rule_set_activations).values(
                        activation=activation.activation,
                        version=activation.version,
                        previous=activation.previous,
                        rollout_percent=activation.rollout_percent,
                        activated_at=activation.activated_at,
                        activated_by=activation.activated_by,
                        note=activation.note,
                    )
                )
        except IntegrityError:
            return False
        in_force: Sequence[str] = [
            v for v in (activation.version, activation.previous) if v is not None
        ]
        await self._conn.execute(
            update(rule_sets)
            .where(rule_sets.c.status == "active", rule_sets.c.version.not_in(in_force))
            .values(status="retired")
        )
        await self._conn.execute(
            update(rule_sets).where(rule_sets.c.version.in_(in_force)).values(status="active")
        )
        return True
