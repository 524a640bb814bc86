"""Alembic migrations: up, down and up again on SQLite and PostgreSQL, and the schema they
build is the one the models describe (constraint names included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from bot.database import (
    alembic_config,
    create_engine,
    downgrade,
    import_models,
    upgrade,
    upgrade_command,
)
from tests.test_ledger_support import DIALECTS, database_url

LEDGER_TABLES = ("ledger_users", "ledger_transfers")
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


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


def ledger_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [diff for diff in compare_metadata(context, import_models())
            if any(table in str(diff) for table in LEDGER_TABLES)]


def ledger_tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) & set(LEDGER_TABLES)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upgrade_downgrade_upgrade(dialect: str, tmp_path: Path) -> None:
    async with database_url(dialect, tmp_path) as url:
        engine = create_engine(url)
        try:
            assert await upgrade(engine, "0001_ledger") == "0001_ledger"
            assert await upgrade(engine) == HEAD
            async with engine.connect() as conn:
                assert await conn.run_sync(ledger_tables) == set(LEDGER_TABLES)
                assert await conn.run_sync(ledger_diff) == []
                for table in LEDGER_TABLES:
                    assert await conn.run_sync(constraint_names, table) == model_names(table)
            assert await downgrade(engine, "base") is None
            async with engine.connect() as conn:
                assert await conn.run_sync(ledger_tables) == set()
            assert await upgrade(engine) == HEAD
        finally:
            await engine.dispose()


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
