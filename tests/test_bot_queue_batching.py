"""The job queue pops together only jobs the engine runs in one pipeline call.

Jobs popped together are all shown "Starting…"; one the engine then ran in a later call would
have waited behind that label. The queue and the engine follow one rule, engine.batching.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.database import create_database, upgrade
from bot.jobs.models import Job
from bot.jobs.queue import JobQueue, NewJob
from engine.events import Failed
from engine.request import GenerationRequest

FIRST = GenerationRequest(prompt="first", model="/models/m", width=32, height=32, steps=2,
                          sampler="euler", cfg=5.0, seed=1, count=1)


class Ledger:
    async def capture(self, hold_id: int) -> bool:
        return True

    async def release(self, hold_id: int) -> bool:
        return True

    async def hold_status(self, hold_id: int) -> str:
        return "pending"


class Engine:
    """Records submitted prompts; every job's stream waits until the test lets them end."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.finish = asyncio.Event()

    def submit(self, request: GenerationRequest) -> AsyncIterator[Any]:
        self.submitted.append(request.prompt)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Any]:
        await self.finish.wait()
        yield Failed(request.job_id, "the test is over", "error")

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

    async def ended(self, job: Job) -> None: ...


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


@pytest.mark.parametrize(("change", "together"), [
    ({"cfg": 7.0}, False),
    ({"negative_prompt": "blurry"}, False),
    ({"prompt": "second", "seed": 9, "count": 2}, True),  # what may differ within one call
])
async def test_jobs_the_engine_would_split_are_not_popped_together(
        tmp_path: Path, change: dict[str, Any], together: bool) -> None:
    second = FIRST.model_copy(update={"prompt": "second", **change})
    database = create_database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await upgrade(database)
    engine, observer = Engine(), Observer()
    ticks = itertools.count()

    def make_queue() -> JobQueue:
        return JobQueue(database, engine, Ledger(), observer=observer, per_user=4,
                        global_limit=8, max_batch=8,
                        clock=lambda: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(
                            seconds=next(ticks)))

    # Both jobs wait before the dispatcher runs: queued before a restart, recovered in order.
    before = make_queue()
    for user, request in [(1, FIRST), (2, second)]:
        await before.enqueue(NewJob(
            request=request, kind="imagine", action="gen", owner_id=user, hold_id=user,
            cost=1, application_id=1, interaction_id=user, interaction_token="t",
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
