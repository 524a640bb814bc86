"""Housekeeping jobs: registered with fixed ids and safe settings, and each does its chore."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bot.database import sqlite_path
from bot.housekeeping import (
    AUDIT_JOB_ID,
    BACKUP_JOB_ID,
    RELEASE_JOB_ID,
    backup_sqlite,
    build_scheduler,
    release_stale_holds,
    run_startup_housekeeping,
)
from bot.ledger import HoldInfo, Ledger
from tests.support.bot import answer, idle_bot
from tests.support.ledger import FakeClock

USER = 175928847299117063


class Jobs:
    """The job queue's part in the sweep: it keeps the holds it names, and has no orphans."""

    def __init__(self, keep: set[int] | None = None) -> None:
        self.keep = keep or set()
        self.orphan_sweeps = 0

    def keeps_hold(self, hold: HoldInfo) -> bool:
        return hold.id in self.keep

    async def release_orphan_holds(self) -> int:
        self.orphan_sweeps += 1
        return 0


@pytest.fixture
async def ledger(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Ledger]:
    opened = await Ledger.connect(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", clock,
                                  hold_ttl=timedelta(hours=1))
    yield opened
    await opened.close()


async def test_scheduler_jobs(ledger: Ledger, tmp_path: Path) -> None:
    async def prune() -> None:
        pass

    scheduler = build_scheduler(ledger, Jobs(), backup_path=tmp_path / "bot.db",
                                backup_dir=tmp_path / "backups", backup_keep=3,
                                extra_jobs=[("prune-jobs", prune, {"trigger": "interval",
                                                                   "hours": 6})])
    scheduler.start(paused=True)
    try:
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert set(jobs) == {RELEASE_JOB_ID, AUDIT_JOB_ID, BACKUP_JOB_ID, "prune-jobs"}
        for job in jobs.values():
            assert job.coalesce is True
            assert job.misfire_grace_time is None
        assert jobs["prune-jobs"].func is prune
        path = await jobs[BACKUP_JOB_ID].func()
        assert path.parent == tmp_path / "backups"
    finally:
        scheduler.shutdown(wait=False)


async def test_no_backup_job_without_a_file(ledger: Ledger) -> None:
    scheduler = build_scheduler(ledger, Jobs(), backup_path=None, backup_dir=Path("unused"),
                                backup_keep=1)
    scheduler.start(paused=True)
    try:
        assert {job.id for job in scheduler.get_jobs()} == {RELEASE_JOB_ID, AUDIT_JOB_ID}
    finally:
        scheduler.shutdown(wait=False)


async def test_startup_sweeps_and_audits_loudly(ledger: Ledger, clock: FakeClock,
                                                caplog: pytest.LogCaptureFixture) -> None:
    await ledger.touch(USER)
    hold_id = await ledger.hold(USER, 10, "job:lost")
    clock.advance(timedelta(hours=2))
    jobs = Jobs()
    assert await run_startup_housekeeping(ledger, jobs) == []
    assert not await ledger.release(hold_id)  # released by the sweep
    assert jobs.orphan_sweeps == 1
    assert await run_startup_housekeeping(ledger, jobs) == []

    async with ledger.database.begin() as conn:
        await conn.execute(text("UPDATE ledger_users SET posted = 0, available = 0"))
    with caplog.at_level(logging.ERROR):
        problems = await run_startup_housekeeping(ledger, jobs)
    assert len(problems) == 1
    assert [record.levelno for record in caplog.records] == [logging.ERROR]
    assert problems[0] in caplog.records[0].getMessage()


async def test_the_sweep_leaves_the_holds_of_queued_jobs_to_them(ledger: Ledger,
                                                                 clock: FakeClock) -> None:
    await ledger.touch(USER)
    await ledger.hold(USER, 10, "job:lost")
    kept = await ledger.hold(USER, 10, "job:running")
    clock.advance(timedelta(hours=2))
    assert await release_stale_holds(ledger, Jobs(keep={kept})) == 1
    assert await ledger.release(kept)  # still there for its job to resolve


async def test_backup_copies_live_database_and_keeps_the_newest(
        ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    await ledger.touch(USER)
    backups = tmp_path / "backups"
    made = []
    for _day in range(4):
        made.append(backup_sqlite(tmp_path / "bot.db", backups, 2, clock.time))
        backup_sqlite(tmp_path / "bot.db", backups, 2, clock.time)  # same day: replaced
        clock.advance(timedelta(days=1))
    assert sorted(backups.iterdir()) == made[-2:]
    with sqlite3.connect(made[-1]) as copy:
        assert copy.execute("SELECT available FROM ledger_users").fetchone() == (300,)
    copy.close()


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite+aiosqlite:///data/bot.db") == Path("data/bot.db")
    assert sqlite_path("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_path("postgresql+asyncpg://u@h/db") is None
    assert sqlite_path("sqlite+aiosqlite:///file:bot.db?mode=memory&uri=true") is None


async def test_a_failing_startup_audit_is_logged_and_the_bot_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """As SQLite answered an audit of balances that had overflowed into REALs."""

    async def overflows(self: Ledger) -> list[str]:
        raise OperationalError("SELECT sum(...)", {}, sqlite3.OperationalError("integer overflow"))

    monkeypatch.setattr(Ledger, "audit", overflows)
    with caplog.at_level(logging.ERROR, logger="bot.housekeeping"):
        async with idle_bot(tmp_path) as (emu, bot):
            assert bot.is_ready()
            reply = await answer(emu, await emu.slash(emu.add_user(name="eve"), "credits"))
            assert reply.embeds  # it serves commands
    [record] = [r for r in caplog.records if r.name == "bot.housekeeping"]
    assert "startup ledger sweep and audit failed; starting anyway" in record.getMessage()
    assert record.exc_info is not None and "integer overflow" in str(record.exc_info[1])
