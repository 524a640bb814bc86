"""The job queue pops together only jobs the engine runs in one pipeline call.

Jobs popped together are all shown "Starting…"; one the engine then ran in a later call would
have waited behind that label. The queue and the engine follow one rule, engine.batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.database import create_database, upgrade
from bot.jobs.api import NewJob
from bot.jobs.models import Job, JobCrash
from bot.jobs.quarantine import request_digest
from bot.jobs.queue import JobQueue
from engine.events import Failed
from engine.request import GenerationRequest
from tests.support.engines import TrustingLocalEngine

FIRST = GenerationRequest(prompt="first", model="/models/m", width=32, height=32, steps=2,
                          sampler="euler", cfg=5.0, seed=1, count=1)


class Ledger:
    """Every hold is pending; holds live in the test database's transactions only."""

    def __init__(self, database: AsyncEngine) -> None:
        self.database = database

    def transaction(self) -> Any:
        return self.database.begin()

    async def hold(self, user_id: int, amount: int, key: str, *,
                   connection: AsyncConnection | None = None) -> int:
        return user_id

    async def unresolved_holds(self, *, created_before: datetime) -> list[Any]:
        return []

    async def capture(self, hold_id: int) -> bool:
        return True

    async def release(self, hold_id: int) -> bool:
        return True

    async def hold_status(self, hold_id: int) -> str:
        return "pending"


class Engine:
    """Records submitted prompts; every job's stream waits until the test lets them end."""

    operations: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.finish = asyncio.Event()

    def submit(self, request: GenerationRequest) -> AsyncIterator[Any]:
        self.submitted.append(request.prompt)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Any]:
        await self.finish.wait()
        yield Failed(request.job_id, "the test is over", "error")

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Fakes run nothing in batches: submitting together changes nothing."""
        return contextlib.nullcontext()

    async def cancel(self, job_id: str) -> bool:
        return False


class Observer:
    """Records the prompts of started jobs in order; nothing else is shown."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def started(self, job: Job) -> None:
        self.prompts.append(job.request.prompt)

    async def resumed(self, job: Job, position: int) -> None: ...

    async def paused(self, job: Job) -> None: ...

    async def moved(self, job: Job, position: int) -> None: ...

    async def progress(self, job: Job, event: Any) -> None: ...

    async def deliver(self, job: Job) -> None: ...

    async def ended(self, job: Job, ending: Any) -> None: ...


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


SHAREABLE = {"prompt": "second", "seed": 9, "count": 2}  # what may differ within one call


@pytest.mark.parametrize(("change", "crashed_before", "together"), [
    ({"cfg": 7.0}, False, False),
    ({"negative_prompt": "blurry"}, False, False),
    (SHAREABLE, False, True),
    (SHAREABLE, True, False),  # a request that crashed the worker before runs alone
])
async def test_jobs_the_engine_would_split_are_not_popped_together(
        tmp_path: Path, change: dict[str, Any], crashed_before: bool, together: bool) -> None:
    second = FIRST.model_copy(update={"prompt": "second", **change})
    database = create_database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await upgrade(database)
    if crashed_before:
        async with database.begin() as conn:
            await conn.execute(insert(JobCrash).values(
                digest=request_digest(FIRST), crashes=1, last_job_id="0" * 32,
                last_crash_at=datetime(2025, 1, 1, tzinfo=UTC)))
    engine, observer = Engine(), Observer()
    ticks = itertools.count()

    def make_queue() -> JobQueue:
        return JobQueue(database, TrustingLocalEngine(engine), Ledger(database),
                        observer=observer, per_user=4,
                        global_limit=8, max_batch=8, crash_limit=2,
                        clock=lambda: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(
                            seconds=next(ticks)))

    # Both jobs wait before the dispatcher runs: queued before a restart, recovered in order.
    before = make_queue()
    for user, request in [(1, FIRST), (2, second)]:
        await before.enqueue(NewJob(
            request=request, kind="imagine", action="gen", owner_id=user, cost=1,
            application_id=1, interaction_id=user, interaction_token="t",
            guild_id=None, channel_id=1, upload_limit=10**6))
    queue = make_queue()
    try:
        await queue.start()
        await _until(lambda: observer.prompts)
        # started() is announced only after the whole batch was submitted
        assert engine.submitted == (["first", "second"] if together else ["first"])
        assert observer.prompts == engine.submitted
        engine.finish.set()
        await _until(lambda: len(engine.submitted) == 2)
    finally:
        engine.finish.set()
        await queue.close(5)
        await database.dispose()


def test_the_crash_digest_ignores_seeds_but_not_what_is_made() -> None:
    """Repeating a crashing request without a seed draws a new one: it must count the same."""
    base = request_digest(FIRST)
    assert request_digest(FIRST.model_copy(update={"seed": 12345, "job_id": "x"})) == base
    assert request_digest(FIRST.model_copy(update={"variation_seed": 7})) == base
    for change in ({"prompt": "second"}, {"width": 64}, {"steps": 3}, {"operation": "upscale"},
                   {"params": {"scale": 2}}, {"count": FIRST.count + 1}):
        assert request_digest(FIRST.model_copy(update=change)) != base, change


class MoveObserver(Observer):
    """Also records each "you moved up" update: (prompt, position)."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[str, int]] = []

    async def moved(self, job: Job, position: int) -> None:
        self.moves.append((job.request.prompt, position))


async def test_a_move_while_a_jobs_message_id_is_recorded_is_still_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The announcer skips a job whose message id is not known yet; recording the id must make
    it look again, or a member whose job moved up meanwhile keeps seeing the old place."""
    monkeypatch.setattr("bot.jobs.queue.POSITION_INTERVAL", 0.01)
    database = create_database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await upgrade(database)
    engine, observer = Engine(), MoveObserver()
    queue = JobQueue(database, TrustingLocalEngine(engine), Ledger(database), observer=observer,
                     per_user=4, global_limit=8, max_batch=8, crash_limit=2,
                     clock=lambda: datetime(2025, 1, 1, tzinfo=UTC))

    async def enqueue(user: int, prompt: str) -> Job:
        job, _ = await queue.enqueue(NewJob(
            request=FIRST.model_copy(update={"prompt": prompt}), kind="imagine", action="gen",
            owner_id=user, cost=1, application_id=1, interaction_id=user,
            interaction_token="t", guild_id=None, channel_id=1, upload_limit=10**6))
        return job

    try:
        await queue.start()
        await enqueue(1, "first")
        await _until(lambda: observer.prompts == ["first"])  # it holds the only slot
        ahead, behind = await enqueue(2, "ahead"), await enqueue(3, "behind")
        assert (queue.position(ahead.id), queue.position(behind.id)) == (1, 2)
        await queue.attach_message(ahead.id, 101)
        recording, recorded = asyncio.Event(), asyncio.Event()
        update = queue._store.update

        async def slow_update(job_id: str, **values: Any) -> None:
            if job_id == behind.id:
                recording.set()
                await recorded.wait()
            await update(job_id, **values)

        monkeypatch.setattr(queue._store, "update", slow_update)
        attaching = asyncio.create_task(queue.attach_message(behind.id, 102))
        await recording.wait()
        assert await queue.cancel(ahead.id, 2)
        await asyncio.sleep(0.1)  # the announcer's round: behind has no message id yet
        assert observer.moves == []
        recorded.set()
        await attaching
        await _until(lambda: observer.moves)
        assert observer.moves == [("behind", 1)]
    finally:
        engine.finish.set()
        await queue.close(5)
        await database.dispose()
