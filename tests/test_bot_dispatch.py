"""The job queue against many workers, through the seam of engine.dispatch: the real JobQueue
and ledger on a SQLite file, and a FakeEngine whose workers the test starts and whose jobs it
ends. Fairness and routing, N batches at once, lost jobs put back through their row, fenced
results, and the refund once a job was lost too often."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from bot.database import create_database, upgrade
from bot.generation import queued_text
from bot.jobs.api import NewJob
from bot.jobs.models import EndReason, Job, JobState
from bot.jobs.queue import MAX_ATTEMPTS, JobQueue
from bot.ledger import Ledger
from engine.request import GenerationRequest
from tests.support.engines import FakeEngine, FakeWorker
from tests.support.job_machine import Observer as PlannedDiscord
from tests.support.job_machine import settle
from tests.support.ledger import FakeClock

SIGNUP = 100
COST = 10
ALICE, BOB, CARA = 1001, 1002, 1003
cfgs = itertools.count(1)


def request(model: str, *, shared: bool = False) -> GenerationRequest:
    """A request for ``model``; one that batches with no other unless ``shared``."""
    return GenerationRequest(prompt="a cat", model=model, width=32, height=32, steps=2,
                             sampler="euler", cfg=5.0 if shared else float(next(cfgs) % 30),
                             seed=1, count=1)


class Observer(PlannedDiscord):
    """The state machines' Discord, which also records jobs put back after a loss."""

    def __init__(self) -> None:
        super().__init__()
        self.requeued_at: dict[str, list[int]] = {}

    async def requeued(self, job: Job, position: int) -> None:
        self.requeued_at.setdefault(job.id, []).append(position)


@dataclass
class Bot:
    queue: JobQueue
    engine: FakeEngine
    ledger: Ledger
    observer: Observer
    clock: FakeClock
    database: Any
    interactions: itertools.count[int]

    async def enqueue(self, user: int, model: str, *, shared: bool = False) -> str:
        self.clock.advance(timedelta(seconds=1))
        await self.ledger.touch(user)
        interaction = next(self.interactions)
        job, _ = await self.queue.enqueue(NewJob(
            request=request(model, shared=shared), kind="imagine", action="gen", owner_id=user,
            cost=COST, application_id=1, interaction_id=interaction,
            interaction_token=f"token-{interaction}", guild_id=None, channel_id=1,
            upload_limit=10**6))
        await settle()
        return job.id

    async def row(self, job_id: str) -> tuple[str, str | None, int]:
        job = await self.queue.get(job_id)
        assert job is not None
        return job.state, job.end_reason, job.attempts

    async def holds(self, job_id: str) -> list[str]:
        """How the job's hold was resolved: [] while pending, ["capture"] or ["release"]."""
        async with self.database.connect() as conn:
            return list((await conn.scalars(text(
                "SELECT t.kind FROM ledger_transfers t JOIN jobs j ON t.pending_id = j.hold_id "
                "WHERE j.id = :id"), {"id": job_id})).all())


@pytest.fixture
async def make_bot(tmp_path: Path) -> AsyncIterator[Any]:
    bots: list[Bot] = []

    async def make(*workers: FakeWorker) -> Bot:
        database = create_database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
        await upgrade(database)
        clock = FakeClock()
        ledger = Ledger(database, clock, signup_credits=SIGNUP, daily_credits=0,
                        min_account_age=timedelta(0), hold_ttl=timedelta(hours=1))
        engine, observer = FakeEngine(workers, tmp_path), Observer()
        queue = JobQueue(database, engine, ledger, clock=clock, observer=observer,
                         per_user=5, global_limit=20, max_batch=8, crash_limit=2)
        await queue.start()
        await settle()
        bot = Bot(queue, engine, ledger, observer, clock, database, itertools.count(1))
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.queue.close(0)
        await bot.ledger.close()


def jobs_of(engine: FakeEngine, names: dict[str, str]) -> list[tuple[str, list[str]]]:
    """The batches submitted, with the test's names for the job ids."""
    return [(worker, [names[job_id] for job_id in job_ids])
            for worker, job_ids, _ in engine.batches]


async def test_users_take_turns_and_each_job_goes_to_a_worker_that_offers_its_model(
        make_bot: Any) -> None:
    """3 users, 2 workers with different models: each free worker takes the fairest job it
    can run, and a job it cannot run waits without holding up the others."""
    bot = await make_bot(FakeWorker("w1", frozenset({"m1", "m2"}), frozenset({"m1"})),
                         FakeWorker("w2", frozenset({"m2", "m3"}), frozenset({"m2"})))
    names = {}
    for name, user, model in [("a1", ALICE, "m1"), ("a2", ALICE, "m2"), ("a3", ALICE, "m1"),
                              ("b1", BOB, "m2"), ("b2", BOB, "m3"), ("c1", CARA, "m1")]:
        names[await bot.enqueue(user, model)] = name
    ids = {name: job_id for job_id, name in names.items()}
    assert bot.engine.batches == []  # no worker online: every job waits, its credits held
    assert bot.engine.catalogue().workers_online == 0
    bot.engine.start("w1")
    bot.engine.start("w2")
    await settle()
    assert jobs_of(bot.engine, names) == [("w1", ["a1"]), ("w2", ["b1"])]  # both at once
    for finished in ["b1", "a1", "a2", "c1"]:
        bot.engine.done(ids[finished])
        await settle()
    assert jobs_of(bot.engine, names) == [
        ("w1", ["a1"]), ("w2", ["b1"]),
        ("w2", ["a2"]),  # c1 (m1) is next in turn, but w2 cannot run it
        ("w1", ["c1"]), ("w2", ["b2"]), ("w1", ["a3"])]
    for job_id in bot.engine.live():
        bot.engine.done(job_id)
    await settle()
    for job_id in names:
        assert await bot.row(job_id) == (JobState.DELIVERED, None, 1)
        assert await bot.holds(job_id) == ["capture"]


async def test_a_job_goes_to_the_free_worker_that_has_its_model_loaded(make_bot: Any) -> None:
    bot = await make_bot(FakeWorker("w1", frozenset({"m1", "m2"}), frozenset({"m1"})),
                         FakeWorker("w2", frozenset({"m1", "m2"}), frozenset({"m2"})))
    bot.engine.start("w1")  # offered first
    bot.engine.start("w2")
    await settle()
    second = await bot.enqueue(ALICE, "m2")
    assert bot.engine.where(second) == "w2"
    first = await bot.enqueue(BOB, "m1")
    assert bot.engine.where(first) == "w1"
    assert bot.engine.live() == [second, first]


async def test_compatible_jobs_share_a_batch_only_on_a_worker_that_runs_them(
        make_bot: Any) -> None:
    bot = await make_bot(FakeWorker("w1", frozenset({"m1"}), max_batch=2))
    jobs = [await bot.enqueue(user, "m1", shared=True) for user in (ALICE, BOB, CARA)]
    bot.engine.start("w1")
    await settle()
    assert [job_ids for _, job_ids, _ in bot.engine.batches] == [jobs[:2]]  # its max batch


async def test_a_lost_job_runs_again_first_and_its_zombie_result_is_fenced_out(
        make_bot: Any) -> None:
    bot = await make_bot(FakeWorker("w1", frozenset({"m1"})), FakeWorker("w2", frozenset({"m1"})))
    lost = await bot.enqueue(ALICE, "m1")
    later = await bot.enqueue(ALICE, "m1")
    other = await bot.enqueue(BOB, "m1")
    bot.engine.start("w1")
    await settle()
    assert bot.engine.live() == [lost]
    bot.engine.lose(lost, zombie_result=True)  # and the lost attempt's result comes late
    await settle()
    assert bot.observer.requeued_at == {lost: [1]}  # first of all, not behind bob's job
    assert await bot.row(lost) == (JobState.QUEUED, None, 1)
    assert bot.observer.posts[lost] == 0 and await bot.holds(lost) == []
    bot.engine.start("w2")
    await settle()
    assert [(worker, job_ids, attempts) for worker, job_ids, attempts in bot.engine.batches] == [
        ("w1", [lost], [1]), ("w2", [lost], [2])]
    assert await bot.row(lost) == (JobState.RUNNING, None, 2)
    bot.engine.done(lost, times=2)  # the result, and a replay of it
    await settle()
    assert await bot.row(lost) == (JobState.DELIVERED, None, 2)
    assert bot.observer.posts[lost] == 1
    assert await bot.holds(lost) == ["capture"]
    assert bot.engine.live() == [other]  # users still take turns
    assert await bot.holds(later) == []  # still queued, its credits held
    assert await bot.ledger.balance(ALICE) == SIGNUP - COST - COST  # charged once, one held


async def test_a_job_lost_on_every_attempt_fails_and_is_refunded(make_bot: Any) -> None:
    bot = await make_bot(FakeWorker("w1", frozenset({"m1"})))
    job_id = await bot.enqueue(ALICE, "m1")
    for _ in range(MAX_ATTEMPTS):
        bot.engine.start("w1")  # it comes back, and goes away again
        await settle()
        bot.engine.lose(job_id)
        await settle()
    assert await bot.row(job_id) == (JobState.FAILED, EndReason.LOST, MAX_ATTEMPTS)
    assert await bot.holds(job_id) == ["release"]
    assert await bot.ledger.balance(ALICE) == SIGNUP
    assert [ending.reason for ending in bot.observer.endings[job_id]] == [EndReason.LOST]


async def test_a_lost_job_whose_cancel_was_asked_for_ends_cancelled(make_bot: Any) -> None:
    bot = await make_bot(FakeWorker("w1", frozenset({"m1"})))
    bot.engine.start("w1")
    job_id = await bot.enqueue(ALICE, "m1")
    bot.engine.honour_cancel = False  # its worker is gone: nobody stops it
    assert await bot.queue.cancel(job_id, ALICE)
    bot.engine.lose(job_id)
    await settle()
    assert await bot.row(job_id) == (JobState.CANCELLED, EndReason.CANCELLED, 1)
    assert await bot.holds(job_id) == ["release"]
    assert len(bot.engine.batches) == 1


async def test_a_job_waits_for_a_worker_that_offers_its_model(make_bot: Any) -> None:
    bot = await make_bot(FakeWorker("w1", frozenset({"m1"})), FakeWorker("w2", frozenset({"m2"})))
    bot.engine.start("w1")
    job_id = await bot.enqueue(ALICE, "m2")
    assert bot.engine.batches == [] and bot.queue.position(job_id) == 1
    bot.engine.start("w2")
    await settle()
    assert bot.engine.live() == [job_id] and bot.engine.where(job_id) == "w2"


async def test_close_gives_back_the_slots_it_held(make_bot: Any) -> None:
    bot = await make_bot(FakeWorker("w1", frozenset({"m1"})), FakeWorker("w2", frozenset({"m2"})))
    bot.engine.start("w1")
    bot.engine.start("w2")
    await settle()
    await bot.queue.close(0)
    assert sorted(slot.worker for slot in bot.engine.released) == ["w1", "w2"]


def test_the_queued_message_says_when_no_worker_is_online(tmp_path: Path) -> None:
    engine = FakeEngine([FakeWorker("w1", frozenset({"m1"}))], tmp_path)
    bot: Any = SimpleNamespace(engine=engine)
    assert queued_text(bot, 1, 2) == ("⏳ Queued, next in line · costs 2 credits\nNo image "
                                      "generator is online yet; your job runs as soon as one "
                                      "is.")
    engine.workers["w1"].online = True
    assert queued_text(bot, 3, 1) == "⏳ Queued, position 3 · costs 1 credit"
