"""Shared by the ledger and migration tests: where their databases come from.

PostgreSQL comes from IMAGINEBOT_TEST_POSTGRES_URL, or else from a throwaway cluster that
.ci/postgres.sh starts here (when PostgreSQL's tools are installed). Each test gets a fresh
database. With CI=true a missing PostgreSQL fails the run instead of skipping it.
"""

from __future__ import annotations

import atexit
import functools
import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"
DIALECTS = ["sqlite", "postgresql"]


class FakeClock:
    """The injected clock: time moves only when a test says so."""

    def __init__(self, start: datetime = datetime(2026, 3, 1, 12, tzinfo=UTC)) -> None:
        self.time = start

    def __call__(self) -> datetime:
        return self.time

    def advance(self, delta: timedelta) -> None:
        self.time += delta


def _have_postgres_tools() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@functools.cache
def _start_cluster() -> str | None:
    """Start one cluster for this test run; returns its URL or why it could not."""
    if not _have_postgres_tools():
        return None
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=180,
                            check=False)
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if result.returncode != 0 or "IMAGINEBOT_TEST_POSTGRES_URL" not in values:
        raise RuntimeError(f".ci/postgres.sh failed: {result.stderr.strip()[-500:]}")
    atexit.register(subprocess.run, [str(SCRIPT), "stop", values["IMAGINEBOT_TEST_POSTGRES_DIR"]],
                    capture_output=True, check=False)
    return values["IMAGINEBOT_TEST_POSTGRES_URL"]


def postgres_server_url() -> str:
    url = os.environ.get("IMAGINEBOT_TEST_POSTGRES_URL")
    problem = "no initdb/pg_ctl found (install postgresql or run .ci/postgres.sh)"
    if not url:
        try:
            url = _start_cluster()
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            problem = str(error)
    if url:
        return url
    message = f"PostgreSQL tests cannot run: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    base = make_url(postgres_server_url())
    name = f"imaginebot_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=base.host, port=base.port, user=base.username,
                                  password=base.password, database=base.database)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def database_url(dialect: str, directory: Path) -> AsyncIterator[str]:
    """A fresh, empty database of the given dialect."""
    if dialect == "postgresql":
        async with fresh_postgres_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{directory / 'ledger.db'}"
