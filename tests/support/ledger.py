"""Shared by the ledger, migration and housekeeping tests: their databases and clock.

PostgreSQL comes from IMAGINEBOT_TEST_POSTGRES_URL, or else from a throwaway cluster that
.ci/postgres.sh starts here (when PostgreSQL's tools are installed). Each test gets an empty
database: the one at IMAGINEBOT_TEST_POSTGRES_URL is wiped. With CI=true a missing PostgreSQL
fails the run instead of skipping it.
"""

from __future__ import annotations

import atexit
import functools
import glob
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "postgres.sh"
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


async def fresh_postgres_database() -> str:
    """Empty the test database (much faster than CREATE DATABASE) and return its URL."""
    import asyncpg  # the optional [postgres] extra; SQLite tests run without it

    url = postgres_server_url()
    base = make_url(url)
    admin = await asyncpg.connect(host=base.host, port=base.port, user=base.username,
                                  password=base.password, database=base.database)
    try:
        await admin.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await admin.close()
    return url


@asynccontextmanager
async def database_url(dialect: str, directory: Path) -> AsyncIterator[str]:
    """A fresh, empty database of the given dialect."""
    if dialect == "postgresql":
        yield await fresh_postgres_database()
    else:
        yield f"sqlite+aiosqlite:///{directory / 'ledger.db'}"


@pytest.fixture(params=DIALECTS)
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh ledger database, once on SQLite and once on PostgreSQL."""
    async with database_url(request.param, tmp_path) as value:
        yield value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
