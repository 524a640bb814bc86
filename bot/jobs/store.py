"""The job queue's SQL: job rows and crash counts, and nothing about what to do with them."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from bot.jobs.models import FINAL_STATES, Job, JobCrash, JobState


class JobStore:
    def __init__(self, database: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(database, expire_on_commit=False)

    async def get(self, job_id: str) -> Job | None:
        async with self._sessions() as session:
            return await session.get(Job, job_id)

    async def by_key(self, key: str) -> Job | None:
        async with self._sessions() as session:
            return await session.scalar(select(Job).where(Job.request_key == key))

    async def list_jobs(self, state: str | None = None, user_id: int | None = None,
                        limit: int = 20) -> list[Job]:
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        if user_id is not None:
            query = query.where(Job.owner_id == user_id)
        async with self._sessions() as session:
            return list((await session.scalars(query)).all())

    async def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first: what a restart picks up."""
        async with self._sessions() as session:
            return list((await session.scalars(
                select(Job).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                .order_by(Job.created_at, Job.id))).all())

    @staticmethod
    async def insert(connection: AsyncConnection, job: Job) -> None:
        """Write a new row inside the caller's transaction (the one that holds its credits).

        Unset attributes are left out, so the columns' defaults apply.
        """
        table = Job.__table__
        values = {column.name: getattr(job, column.name) for column in table.columns}
        await connection.execute(insert(Job).values(
            {name: value for name, value in values.items() if value is not None}))

    async def update(self, job_id: str, **values: Any) -> None:
        async with self._sessions.begin() as session:
            await session.execute(update(Job).where(Job.id == job_id).values(**values))

    async def save(self, job: Job, **values: Any) -> None:
        """Update the row and the in-memory ``job`` alike."""
        await self.update(job.id, **values)
        for name, value in values.items():
            setattr(job, name, value)

    async def accept_result(self, job_id: str, attempt: int, result: dict[str, Any]) -> bool:
        """Record the result of attempt ``attempt``, if that is still the job's running attempt
        and it has no result yet; False otherwise. The fence of every result: a replayed Done,
        or a zombie attempt's, changes nothing, so it is never delivered or charged."""
        async with self._sessions.begin() as session:
            return await session.scalar(
                update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING,
                                  Job.attempts == attempt, Job.result.is_(None))
                .values(result=result).returning(Job.id)) is not None

    async def requeue(self, job_id: str, attempt: int) -> bool:
        """Put a job the engine lost back to queued, if attempt ``attempt`` is still the one
        running; False if the row has moved on (the same fence as :meth:`accept_result`)."""
        async with self._sessions.begin() as session:
            return await session.scalar(
                update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING,
                                  Job.attempts == attempt, Job.result.is_(None))
                .values(state=JobState.QUEUED, started_at=None).returning(Job.id)) is not None

    async def keys_with_jobs(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that some job row was stored under."""
        if not keys:
            return set()
        async with self._sessions() as session:
            return set((await session.scalars(
                select(Job.request_key).where(Job.request_key.in_(list(keys))))).all())

    async def prune(self, older_than: datetime) -> list[str]:
        """Delete finished job rows created before ``older_than``; returns their ids."""
        async with self._sessions.begin() as session:
            return list((await session.scalars(
                delete(Job).where(Job.state.in_(list(FINAL_STATES)),
                                  Job.created_at < older_than).returning(Job.id))).all())

    async def crash_counts(self) -> dict[str, int]:
        async with self._sessions() as session:
            rows = await session.execute(select(JobCrash.digest, JobCrash.crashes))
            return {digest: crashes for digest, crashes in rows}

    async def record_crash(self, digest: str, job_id: str, at: datetime) -> int:
        """Count one more crash of the request ``digest``; returns its count."""
        async with self._sessions.begin() as session:
            crash = await session.get(JobCrash, digest, with_for_update=True)
            if crash is None:
                crash = JobCrash(digest=digest, crashes=0)
                session.add(crash)
            crash.crashes += 1
            crash.last_job_id = job_id
            crash.last_crash_at = at
            return crash.crashes
