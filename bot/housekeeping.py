"""Scheduled chores. Each is safe to run twice or never: the ledger stays correct without them,
they only tidy (release expired and orphaned holds), watch (audit) and protect (backups).

The job queue knows which holds are in use, so the sweep asks it: a hold its job still needs is
never released under it, and a hold with no job (a crash of an older version between hold and
enqueue) is released instead of waiting hours to expire."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.ledger import HoldInfo, Ledger

log = logging.getLogger(__name__)

ExtraJob = tuple[str, Callable[[], Awaitable[Any]], dict[str, Any]]

RELEASE_JOB_ID = "ledger-release-expired"
AUDIT_JOB_ID = "ledger-audit"
BACKUP_JOB_ID = "sqlite-backup"
BACKUP_PREFIX = "imaginebot-"


class HoldKeeper(Protocol):
    """What knows which holds are in use: the job queue (bot.jobs.queue.JobQueue)."""

    def keeps_hold(self, hold: HoldInfo) -> bool: ...

    async def release_orphan_holds(self) -> int: ...


async def release_stale_holds(ledger: Ledger, jobs: HoldKeeper) -> int:
    """Release expired holds no job still needs, then holds no job explains."""
    released = await ledger.release_expired(keep=jobs.keeps_hold)
    if released:
        log.info("released %d expired hold(s)", released)
    return released + await jobs.release_orphan_holds()


async def sweep_and_audit(ledger: Ledger, jobs: HoldKeeper) -> list[str]:
    """The hourly chore: release what is stale, then check the ledger's invariants loudly."""
    await release_stale_holds(ledger, jobs)
    problems = await ledger.audit()
    for problem in problems:
        log.error("ledger audit: %s", problem)
    return problems


async def run_startup_housekeeping(ledger: Ledger, jobs: HoldKeeper) -> list[str]:
    """The same two chores, once the queue has recovered its jobs; never raises.

    A ledger that cannot be swept or audited (a database that says "integer overflow") is
    the administrators' to see in the log, not a reason to keep the bot offline: every
    balance change checks its own invariants, and the hourly audit tries again.
    """
    try:
        return await sweep_and_audit(ledger, jobs)
    except Exception as error:
        log.exception("startup ledger sweep and audit failed; starting anyway "
                      "(`imaginebot credits audit` checks the ledger)")
        return [f"the sweep and audit failed: {error!r}"]


def backup_sqlite(source: Path, backup_dir: Path, keep: int, now: datetime) -> Path:
    """Copy a live database with SQLite's online backup API, then keep the newest ``keep``.

    One file per UTC day: a second run on the same day replaces that day's copy.
    """
    backup_dir.mkdir(parents=True, exist_ok=True)
    target = backup_dir / f"{BACKUP_PREFIX}{now:%Y-%m-%d}.db"
    partial = target.with_suffix(".db.partial")
    with sqlite3.connect(source) as src, sqlite3.connect(partial) as dst:
        src.backup(dst)
    # sqlite3's context manager commits but does not close.
    src.close()
    dst.close()
    partial.replace(target)
    for old in sorted(backup_dir.glob(f"{BACKUP_PREFIX}*.db"))[:-keep]:
        old.unlink()
    log.info("backed up %s to %s", source, target)
    return target


def build_scheduler(ledger: Ledger, jobs: HoldKeeper, *, backup_path: Path | None, backup_dir: Path,
                    backup_keep: int, extra_jobs: Iterable[ExtraJob] = ()) -> AsyncIOScheduler:
    """Fixed job ids, coalesced runs and no misfire limit: a late or doubled run is harmless."""
    scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={
        "coalesce": True, "misfire_grace_time": None, "max_instances": 1})
    scheduler.add_job(release_stale_holds, "interval", args=[ledger, jobs], minutes=5,
                      id=RELEASE_JOB_ID, replace_existing=True)
    scheduler.add_job(sweep_and_audit, "interval", args=[ledger, jobs], hours=1,
                      id=AUDIT_JOB_ID, replace_existing=True)
    if backup_path is not None:
        async def backup() -> Path:
            return await asyncio.to_thread(backup_sqlite, backup_path, backup_dir,
                                           backup_keep, ledger.now())

        scheduler.add_job(backup, "cron", hour=4, minute=0, id=BACKUP_JOB_ID,
                          replace_existing=True)
    for job_id, function, trigger in extra_jobs:
        scheduler.add_job(function, id=job_id, replace_existing=True, **trigger)
    return scheduler

