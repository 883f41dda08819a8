"""Apply Alembic migrations programmatically (used by `tierflow migrate` and `tierflow run`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from tierflow_common.settings import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: DatabaseSettings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in passwords.
    cfg.set_main_option("sqlalchemy.url", settings.async_url().replace("%", "%%"))
    return cfg


def upgrade_head(settings: DatabaseSettings) -> None:
    # "heads": services add migration branches independently; all of them apply.
    command.upgrade(alembic_config(settings), "heads")


async def upgrade_head_async(settings: DatabaseSettings) -> None:
    # env.py runs its own event loop, so keep it off the caller's.
    await asyncio.to_thread(upgrade_head, settings)
