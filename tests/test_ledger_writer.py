"""bot.database.Writer, which serialises the ledger's SQLite writes in this process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.database import Writer, create_database


@pytest.fixture
async def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AsyncEngine]:
    # No busy timeout: a write that overlapped another would fail instead of waiting.
    monkeypatch.setattr("bot.database.SQLITE_BUSY_TIMEOUT_MS", 0)
    opened = create_database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    async with opened.begin() as conn:
        await conn.execute(text("CREATE TABLE log (n INTEGER)"))
    yield opened
    await opened.dispose()


async def rows(database: AsyncEngine) -> list[int]:
    async with database.connect() as conn:
        return list(await conn.scalars(text("SELECT n FROM log ORDER BY rowid")))


async def test_run_commits_in_its_own_thread_and_rolls_back_on_error(
        database: AsyncEngine) -> None:
    writer = Writer(database)
    threads: list[str] = []

    def insert(conn: Connection) -> int:
        threads.append(threading.current_thread().name)
        conn.execute(text("INSERT INTO log VALUES (1)"))
        return 7

    def fail(conn: Connection) -> None:
        conn.execute(text("INSERT INTO log VALUES (2)"))
        raise ValueError("refused")

    assert await writer.run(insert) == 7
    with pytest.raises(ValueError, match="refused"):
        await writer.run(fail)
    assert await rows(database) == [1]
    assert threads[0].startswith("sqlite-writer")
    await writer.close()
    assert await writer.run(insert) == 7  # reopens after close
    await writer.close()
    assert await rows(database) == [1, 1]


async def test_a_cancelled_writer_keeps_the_lock_until_its_transaction_ends(
        database: AsyncEngine) -> None:
    writer = Writer(database)
    started = threading.Event()

    def slow(conn: Connection) -> None:
        conn.execute(text("INSERT INTO log VALUES (1)"))
        started.set()
        time.sleep(0.3)

    task = asyncio.create_task(writer.run(slow))
    await asyncio.to_thread(started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The thread still holds SQLite's write lock: this must wait for it, not fail.
    async with writer.begin() as conn:
        await conn.execute(text("INSERT INTO log VALUES (2)"))
    assert await rows(database) == [1, 2]
    await writer.close()


async def test_begin_and_run_take_turns(database: AsyncEngine) -> None:
    writer = Writer(database)

    async def joined(n: int) -> None:
        async with writer.begin() as conn:
            await conn.execute(text("INSERT INTO log VALUES (:n)"), {"n": n})
            await asyncio.sleep(0)

    def own(conn: Connection) -> None:
        conn.execute(text("INSERT INTO log VALUES (0)"))

    await asyncio.gather(*(joined(n) if n % 2 else writer.run(own) for n in range(40)))
    assert len(await rows(database)) == 40
    await writer.close()


async def test_a_write_inside_begin_raises_instead_of_hanging(database: AsyncEngine) -> None:
    writer = Writer(database)

    def own(conn: Connection) -> None:
        conn.execute(text("INSERT INTO log VALUES (0)"))

    async with writer.begin():
        with pytest.raises(RuntimeError, match="would wait for the block"):
            async with asyncio.timeout(5):
                await writer.run(own)
        with pytest.raises(RuntimeError, match="would wait for the block"):
            async with asyncio.timeout(5), writer.begin():
                pass
    await writer.run(own)
    assert await rows(database) == [0]
    await writer.close()
