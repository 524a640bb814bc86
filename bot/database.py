"""The one place that knows how to open the database and bring its schema up to date.

SQLite gets WAL, a busy timeout, foreign keys and BEGIN IMMEDIATE for write transactions, so
concurrent writers queue on the lock instead of failing halfway with "database is locked".
Other dialects (PostgreSQL through asyncpg) are used as they come.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase

import migrations

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Modules whose models join Base.metadata; Alembic's env imports them for autogenerate.
MODEL_MODULES: tuple[str, ...] = ("bot.ledger.models", "bot.jobs.models")

# Execution option for transactions that only read: they begin DEFERRED and never take the
# SQLite write lock.
READ_ONLY = "imaginebot_read_only"

SQLITE_BUSY_TIMEOUT_MS = 30_000


class Base(DeclarativeBase):
    """Shared declarative base: every table's constraints get predictable names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def import_models() -> MetaData:
    """Import every model module so Base.metadata knows all tables."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return Base.metadata


def create_database(database_url: str, **kwargs: Any) -> AsyncEngine:
    """The database: an async SQLAlchemy engine, on SQLite with the pragmas and the
    BEGIN IMMEDIATE hook installed.

    In bot/ "engine" always means the diffusion engine, so this object is called the database.
    """
    database = create_async_engine(database_url, **kwargs)
    if database.dialect.name == "sqlite":
        path = database.url.database
        if path and path != ":memory:" and not path.startswith("file:"):
            # A fresh install's data/ folder should not be an error.
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        _configure_sqlite(database)
    return database


def _configure_sqlite(database: AsyncEngine) -> None:
    @event.listens_for(database.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not emit its own BEGIN; the "begin" hook below does.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(database.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Taking the write lock at BEGIN makes a read-then-write transaction wait for its turn
        # (honouring busy_timeout) instead of failing when it upgrades its lock.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configured in code, so an installed package finds its migrations."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(database: AsyncEngine, revision: str = "head") -> str | None:
    """Apply migrations on a connection shared with Alembic; returns the revision reached."""

    def do_upgrade(connection: Connection) -> str | None:
        command.upgrade(alembic_config(connection), revision)
        return current_revision(connection)

    async with database.begin() as conn:
        return await conn.run_sync(do_upgrade)


async def downgrade(database: AsyncEngine, revision: str) -> str | None:
    """Revert migrations down to ``revision`` ("base" empties the schema)."""

    def do_downgrade(connection: Connection) -> str | None:
        command.downgrade(alembic_config(connection), revision)
        return current_revision(connection)

    async with database.begin() as conn:
        return await conn.run_sync(do_downgrade)


def upgrade_command(database_url: str) -> int:
    """``imaginebot db upgrade``: migrate to head and say where the schema is now."""

    async def run() -> str | None:
        database = create_database(database_url)
        try:
            return await upgrade(database)
        finally:
            await database.dispose()

    try:
        revision = asyncio.run(run())
    except (SQLAlchemyError, OSError) as error:
        print(f"imaginebot db: {describe_database_error(error)}", file=sys.stderr)
        return 1
    print(f"database is at revision {revision or 'base'}")
    return 0


def describe_database_error(error: SQLAlchemyError | OSError) -> str:
    """One line for an admin: the driver's message without SQLAlchemy's SQL echo and links."""
    return "database error: " + str(getattr(error, "orig", None) or error).splitlines()[0]
