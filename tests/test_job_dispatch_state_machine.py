"""The real job queue and ledger on a SQLite file, dispatching to two workers through the seam
of engine.dispatch (tests/support/engines.FakeEngine), driven through what scale-out adds:
results (replayed too), cancels (honoured or not), the reaper's "lost" (with a zombie's late
result after it), workers going and coming, and restarts (clean, or the process killed).

After each step the loop runs until every task waits on the test (``settle``), then:

* each hold is resolved at most once, and exactly once when its job is final, never while it
  is queued or running; it is captured if and only if its job was delivered;
* a delivered job was delivered once, with the result of the attempt its row says ran: a
  lost attempt's late result is never delivered nor charged;
* nothing is stuck: a running job is on a worker at its row's attempt, and a queued job waits
  only while every online worker that offers its model is busy;
* each ending has a reason the steps explain, and ``ledger.audit()`` is empty.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.database import create_database, upgrade
from bot.housekeeping import run_startup_housekeeping
from bot.jobs.api import NewJob, QueueRefusal
from bot.jobs.models import EndReason, JobState
from bot.jobs.queue import MAX_ATTEMPTS, JobQueue
from bot.ledger import InsufficientCredits, Ledger
from engine.request import GenerationRequest
from tests.support.engines import FakeEngine, FakeWorker
from tests.support.job_machine import Observer, QueueMachine, settle

USERS = [175928847299117063 + n for n in range(3)]
#: Which models each worker offers: a job for m1 can run on w1 only.
WORKERS = {"w1": frozenset({"m1", "m2"}), "w2": frozenset({"m2"})}
MODELS = ["m1", "m2"]


class JobDispatch(QueueMachine):
    def __init__(self) -> None:
        super().__init__("dispatch-sm-", Observer())
        #: job id -> (owner, hold id or None for a free job)
        self.jobs: dict[str, tuple[int, int | None]] = {}
        #: The attempts of each job whose result the engine sent.
        self.results: dict[str, set[int]] = {}
        self.cancel_asked: set[str] = set()
        self.lost: Counter[str] = Counter()
        self.online: set[str] = set()
        self.database: AsyncEngine = create_database(self.url)
        self.run(upgrade(self.database))
        self.run(self.boot())

    async def boot(self) -> None:
        """A bot process: the workers that are online offer it their slots."""
        self.ledger = Ledger(self.database, self.clock, signup_credits=100, daily_credits=0,
                             min_account_age=timedelta(0), hold_ttl=timedelta(hours=1))
        self.engine = FakeEngine([FakeWorker(name, models) for name, models in WORKERS.items()],
                                 self.directory)
        self.queue = JobQueue(self.database, self.engine, self.ledger, clock=self.clock,
                              observer=self.observer, per_user=3, global_limit=5, max_batch=4,
                              crash_limit=2)
        await self.queue.start()
        await run_startup_housekeeping(self.ledger, self.queue)
        for name in sorted(self.online):
            self.engine.start(name)
        await settle()

    # -- rules -----------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), cost=st.sampled_from([0, 10, 45]),
          model=st.sampled_from(MODELS), shared=st.booleans())
    def enqueue(self, user: int, cost: int, model: str, shared: bool) -> None:
        self.clock.advance(timedelta(milliseconds=1))
        self.run(self.ledger.touch(user))
        interaction = next(self.interactions)
        request = GenerationRequest(prompt=f"p{interaction}", model=model, width=32,
                                    height=32, steps=2, sampler="euler",
                                    cfg=5.0 if shared else 1.0 + interaction, seed=1, count=1)
        try:
            job, _ = self.step(self.queue.enqueue(NewJob(
                request=request, kind="imagine", action="gen", owner_id=user, cost=cost,
                application_id=1, interaction_id=interaction,
                interaction_token=f"token-{interaction}", guild_id=None, channel_id=1,
                upload_limit=10**6)))
        except (QueueRefusal, InsufficientCredits):
            return
        self.jobs[job.id] = (user, job.hold_id)

    @precondition(lambda self: set(WORKERS) - self.online)
    @rule(data=st.data())
    def worker_starts(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(set(WORKERS) - self.online)))
        self.online.add(name)
        self.engine.start(name)
        self.step(asyncio.sleep(0))

    def running(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.engine.live()))

    @precondition(lambda self: self.engine.live())
    @rule(data=st.data(), times=st.sampled_from([1, 2]))
    def done(self, data: st.DataObject, times: int) -> None:
        """The result; twice: a replayed message."""
        job_id = self.running(data)
        self.results.setdefault(job_id, set()).add(self.engine.streams[job_id].attempt)
        self.engine.done(job_id, times=times)
        self.step(asyncio.sleep(0))

    @precondition(lambda self: self.engine.live())
    @rule(data=st.data(), zombie=st.booleans())
    def reap(self, data: st.DataObject, zombie: bool) -> None:
        """The reaper finds the job's lease expired: its worker is gone. ``zombie``: that
        worker's result of the lost attempt still comes, late."""
        job_id = self.running(data)
        self.lost[job_id] += 1
        self.online.discard(self.engine.where(job_id))
        self.engine.lose(job_id, zombie_result=zombie)
        self.step(asyncio.sleep(0))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), honoured=st.booleans())
    def cancel(self, data: st.DataObject, honoured: bool) -> None:
        job_id = data.draw(st.sampled_from(list(self.jobs)))  # as made: ids are random
        self.engine.honour_cancel = honoured
        if self.step(self.queue.cancel(job_id, self.jobs[job_id][0])):
            self.cancel_asked.add(job_id)

    @rule(hard=st.booleans())
    def restart(self, hard: bool) -> None:
        if hard:
            self.run(self.kill())
        else:
            self.engine.honour_cancel = True
            self.run(self.queue.close(0))
            self.run(self.ledger.close())
        self.database = create_database(self.url)
        self.run(self.boot())

    # -- invariants ------------------------------------------------------------------------------

    async def rows(self) -> dict[str, tuple[str, str | None, int, bool]]:
        async with self.database.connect() as conn:
            result = await conn.execute(text(
                "SELECT id, state, end_reason, attempts, result IS NOT NULL FROM jobs"))
            return {job_id: (state, reason, attempts, bool(has_result))
                    for job_id, state, reason, attempts, has_result in result}

    async def resolutions(self) -> dict[int, list[str]]:
        async with self.database.connect() as conn:
            found: dict[int, list[str]] = {}
            for hold_id, kind in await conn.execute(text(
                    "SELECT pending_id, kind FROM ledger_transfers "
                    "WHERE pending_id IS NOT NULL")):
                found.setdefault(hold_id, []).append(kind)
            return found

    @invariant()
    def each_hold_is_resolved_once_and_captured_iff_delivered(self) -> None:
        rows = self.run(self.rows())
        resolutions = self.run(self.resolutions())
        for job_id, (_, hold_id) in self.jobs.items():
            state = rows[job_id][0]
            if hold_id is None:
                continue
            kinds = resolutions.get(hold_id, [])
            if state in (JobState.QUEUED, JobState.RUNNING):
                assert kinds == [], f"job {job_id} is {state}, its hold {kinds}"
            elif state == JobState.DELIVERED:
                assert kinds == ["capture"], f"job {job_id} delivered, its hold {kinds}"
            else:
                assert kinds == ["release"], f"job {job_id} {state}, its hold {kinds}"
        assert self.run(self.ledger.audit()) == []

    @invariant()
    def results_count_once_and_only_from_the_running_attempt(self) -> None:
        rows = self.run(self.rows())
        for job_id in self.jobs:
            state, reason, attempts, has_result = rows[job_id]
            assert self.observer.posts[job_id] <= 1, f"job {job_id} posted twice"
            if has_result:
                assert attempts in self.results.get(job_id, set()), \
                    f"job {job_id}: a result that attempt {attempts} did not send"
            if state == JobState.DELIVERED:
                assert self.observer.posts[job_id] == 1
            elif state == JobState.FAILED:
                assert reason in (EndReason.LOST, EndReason.RESTART_LIMIT), (job_id, reason)
                assert attempts >= MAX_ATTEMPTS
            elif state == JobState.CANCELLED:
                assert job_id in self.cancel_asked

    @invariant()
    def nothing_is_stuck(self) -> None:
        rows = self.run(self.rows())
        live = self.engine.live()
        for job_id in live:
            state, _, attempts, has_result = rows[job_id]
            assert state == JobState.RUNNING and not has_result, f"job {job_id} runs in vain"
            assert attempts == self.engine.streams[job_id].attempt
        busy = {self.engine.where(job_id) for job_id in live}
        free = [WORKERS[name] for name in self.online - busy]
        for job_id, (state, _, _, has_result) in rows.items():
            if state == JobState.RUNNING and not has_result:
                assert job_id in live, f"job {job_id} is running but on no worker"
            if state == JobState.QUEUED:
                job = self.run(self.queue.get(job_id))
                assert job is not None
                model = job.params["model"]
                assert not any(model in models for models in free), \
                    f"job {job_id} ({model}) waits while a worker that runs it is free"


JobDispatch.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
# Slow: 30 bots of up to 25 steps each, every step on a real SQLite file.
TestJobDispatch = pytest.mark.slow(JobDispatch.TestCase)
