"""Alembic migrations: up, down and up again on SQLite and PostgreSQL, and the schema they
build is the one the models describe, for every table (constraint names included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Integer, MetaData, Table, inspect

from bot.database import (
    alembic_config,
    create_database,
    downgrade,
    import_models,
    upgrade,
    upgrade_command,
)
from tests.support.ledger import DIALECTS, database_url

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
MODEL_TABLES = set(import_models().tables)


def constraint_names(connection: Connection, table: str) -> set[str]:
    inspector = inspect(connection)
    found: list[Any] = [inspector.get_pk_constraint(table)]
    for getter in (inspector.get_unique_constraints, inspector.get_foreign_keys,
                   inspector.get_check_constraints, inspector.get_indexes):
        found += getter(table)
    return {str(item["name"]) for item in found}


def model_names(table: str) -> set[str]:
    model = import_models().tables[table]
    return {str(c.name) for c in model.constraints} | {str(i.name) for i in model.indexes}


def schema_diff(connection: Connection, metadata: MetaData) -> list[Any]:
    """Alembic's autogenerate comparison: tables, columns, types, nullability, indexes, unique
    and foreign keys. Check constraints it cannot compare; constraint_names covers those."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def model_tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) & MODEL_TABLES


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upgrade_downgrade_upgrade(dialect: str, tmp_path: Path) -> None:
    async with database_url(dialect, tmp_path) as url:
        database = create_database(url)
        try:
            assert await upgrade(database, "0001_ledger") == "0001_ledger"
            assert await upgrade(database) == HEAD
            async with database.connect() as conn:
                assert await conn.run_sync(model_tables) == MODEL_TABLES
                assert await conn.run_sync(schema_diff, import_models()) == []
                for table in sorted(MODEL_TABLES):
                    assert await conn.run_sync(constraint_names, table) == model_names(table)
            assert await downgrade(database, "base") is None
            async with database.connect() as conn:
                assert await conn.run_sync(model_tables) == set()
            assert await upgrade(database) == HEAD
        finally:
            await database.dispose()


async def test_the_comparison_sees_a_missing_table(tmp_path: Path) -> None:
    """A model the migrations do not build shows up in the diff (so [] above means agreement)."""
    metadata = MetaData()
    for table in import_models().tables.values():
        table.to_metadata(metadata)
    Table("not_migrated", metadata, Column("id", Integer, primary_key=True))
    database = create_database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    try:
        await upgrade(database)
        async with database.connect() as conn:
            diff = await conn.run_sync(schema_diff, metadata)
    finally:
        await database.dispose()
    assert [(kind, table.name) for kind, table in diff] == [("add_table", "not_migrated")]


def test_db_upgrade_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    assert upgrade_command(url) == 0
    assert capsys.readouterr().out.strip() == f"database is at revision {HEAD}"
    assert upgrade_command(url) == 0
    assert (tmp_path / "bot.db").exists()


def test_db_upgrade_command_reports_a_bad_database(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a database, " * 100)
    assert upgrade_command(f"sqlite+aiosqlite:///{tmp_path / 'notes.txt'}") == 1
    assert capsys.readouterr().err == "imaginebot db: database error: file is not a database\n"
