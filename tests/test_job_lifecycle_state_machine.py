"""The real job queue and ledger on a SQLite file, driven through every way a job can end.

Hypothesis picks sequences of enqueues (replayed interactions, refusals and too few credits
included), engine events (progress, done, failed of every kind, a worker crash or stall that
fails every running job), cancels (of queued, running and delivering jobs, by their owner, by
someone else, by an admin; honoured by the engine or overtaken by the result), deliveries that
succeed, fail or hang, sweeps (with the clock moved, past the hold TTL too), orphan holds,
database errors under the dispatcher, and restarts (a clean shutdown, or the process killed
wherever it waits). Between steps the event loop runs until every task waits on something only
the test can give (``settle``), so the same steps always end the same way; then:

* no job is lost or stuck: each is queued, running, delivering or final, a queued job waits
  only behind a running batch, a running job is in the engine, a delivering one is being
  delivered, and a final job stays as it ended;
* each job ended the way its last event says, or for a reason the model explains (its hold
  expired, its request is quarantined, it was caught running by too many restarts);
* each hold is resolved at most once, and exactly once when its job is final, never while
  its job is still in the queue; it is captured if and only if its job was delivered, and a
  delivery whose capture was refused (the hold had expired) is marked ``delivered_free``;
* ``ledger.audit()`` is empty and no balance is negative;
* nothing was logged that says the queue itself went wrong (a dead dispatcher, a batch put
  back or a database retry that no injected error explains), and the queue never posted a
  result whose message it had recorded, nor submitted a job twice.

The findings at the end are what the machine found, each reproduced in a few steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule
from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.database import create_database, upgrade
from bot.housekeeping import release_stale_holds, run_startup_housekeeping
from bot.jobs import retry
from bot.jobs.api import NewJob, QueueRefusal, Refusal
from bot.jobs.models import EndReason, JobState
from bot.jobs.quarantine import request_digest
from bot.jobs.queue import MAX_ATTEMPTS, ORPHAN_AGE, JobQueue
from bot.ledger import InsufficientCredits, Ledger
from engine.events import Done, EngineEvent, Failed, ImageResult, Progress
from engine.request import GenerationRequest
from tests.support.engines import TrustingLocalEngine
from tests.support.job_machine import Observer, QueueMachine, settle, stop_tasks

SIGNUP, DAILY = 100, 50
HOLD_TTL = timedelta(hours=1)
PER_USER, GLOBAL, MAX_BATCH, CRASH_LIMIT = 3, 5, 4, 2
USERS = [175928847299117063 + n for n in range(3)]
ADMIN = 42
BASE = GenerationRequest(prompt="a", model="/models/m", width=32, height=32, steps=2,
                         sampler="euler", cfg=5.0, seed=1, count=1)
#: Requests that batch together (a, b), one that does not (cfg) and one of two images.
REQUESTS = [BASE, BASE.model_copy(update={"prompt": "b", "seed": 2}),
            BASE.model_copy(update={"prompt": "c", "cfg": 7.0}),
            BASE.model_copy(update={"prompt": "d", "count": 2})]
HOLD_COSTS = st.sampled_from([1, 10, 45])
COSTS = st.sampled_from([0, 1, 10, 45])  # a free job holds nothing
FAILURE_KINDS = ("error", "crashed", "stalled", "invalid", "cancelled")
FAILED_AS = {"error": EndReason.FAILED, "crashed": EndReason.CRASHED,
             "stalled": EndReason.STALLED, "invalid": EndReason.INVALID}
#: What the fake Discord does with a result: post it, refuse it, fail, or hang until told.
DELIVERIES = ("ok", "undeliverable", "error", "hang")
DELIVERED_AS = {"undeliverable": EndReason.UNDELIVERABLE, "error": EndReason.DELIVERY_FAILED}
#: How far a sweep moves the clock first: not at all, past the orphan age, past the hold TTL.
ADVANCES = [timedelta(0), timedelta(minutes=1), ORPHAN_AGE + timedelta(seconds=1),
            HOLD_TTL + timedelta(minutes=1), timedelta(days=1)]
#: Warnings that are part of the story the machine tells (a failed post, a free delivery,
#: crash counts, orphans, and the startup audit, which the machine checks itself); any other
#: warning from the bot is a finding.
EXPECTED_LOGS = ("job %s: delivery failed", "job %s was delivered but its hold",
                 "job %s was in a batch that crashed", "released orphan hold",
                 "ledger audit: %s")
#: What the bot logs when the database fails under it, as the machine makes it do.
FAULT_LOGS = ("database error in %s", "batch of jobs %s failed")


class Stream:
    """One job's engine events, as the test pushes them; ends after Done or Failed."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        #: A Done or Failed was pushed: the job is no longer in the engine.
        self.ended = False
        self.finished = False  # the queue has read the last event

    def push(self, event: EngineEvent) -> None:
        assert not self.ended, f"job {self.job_id}: an event after its last"
        self.ended = isinstance(event, Done | Failed)
        self.events.put_nowait(event)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> EngineEvent:
        if self.finished:
            raise StopAsyncIteration
        event = await self.events.get()
        self.finished = isinstance(event, Done | Failed)
        return event


class Engine:
    """The engine client of one bot process: jobs run until the test ends them."""

    operations: frozenset[str] = frozenset()

    def __init__(self, violations: list[str]) -> None:
        self.streams: dict[str, Stream] = {}
        #: Whether a cancel stops the job at once; if not, its result may still come.
        self.honour_cancel = True
        self.violations = violations

    def live(self) -> list[str]:
        """In the order they were submitted (job ids are random: hypothesis must draw the same
        job from the same steps)."""
        return [job_id for job_id, stream in self.streams.items() if not stream.ended]

    def submit(self, request: GenerationRequest) -> Stream:
        job_id = request.job_id
        assert job_id is not None
        if job_id in self.live():
            self.violations.append(f"job {job_id} submitted while it runs")
        self.streams.pop(job_id, None)
        self.streams[job_id] = Stream(job_id)
        return self.streams[job_id]

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Fakes run nothing in batches: submitting together changes nothing."""
        return contextlib.nullcontext()

    async def cancel(self, job_id: str) -> bool:
        if job_id not in self.live():
            return False
        if self.honour_cancel:
            self.streams[job_id].push(Failed(job_id, "cancelled", "cancelled"))
        return True


class Findings(logging.Handler):
    """Warnings and errors of the bot that no step of the story explains."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("bot.") and not str(record.msg).startswith(EXPECTED_LOGS):
            self.records.append(record)


@dataclass
class ModelJob:
    new: NewJob
    id: str
    #: None for a free job, which holds nothing.
    hold_id: int | None
    digest: str
    expires: datetime | None
    #: (status, end reason) that the next settle must show; status "delivering" is a running
    #: job with a result.
    expect: tuple[str, str | None] | None = None
    #: Who cancelled it while it ran (the engine did not stop it at once), as the queue knows.
    cancelled_by: int | None = None
    #: The engine said Done at least once.
    done: bool = False
    #: (state, end reason, delivered_free) once final; it must never change.
    final: tuple[str, str | None, bool] | None = None

    def outlived_hold(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True)
class Row:
    state: str
    end_reason: str | None
    has_result: bool
    attempts: int
    delivered_free: bool
    hold_id: int | None
    result_message_id: int | None

    @property
    def status(self) -> str:
        return "delivering" if self.state == JobState.RUNNING and self.has_result else self.state


def _ending(job: ModelJob, actor: int | None) -> tuple[str, str]:
    """How a job cancelled by ``actor`` ends (None: the engine stopped it on its own)."""
    if actor is None or actor == job.new.owner_id:
        return JobState.CANCELLED, EndReason.CANCELLED
    return JobState.CANCELLED, EndReason.CANCELLED_BY_ADMIN


def starts_a_job(statement: str, parameters: Any) -> bool:
    """The write that marks a job running (a result's write names "running" only in its
    WHERE, as the fence of its attempt)."""
    return statement.startswith("UPDATE jobs SET state=") and parameters[0] == JobState.RUNNING


class JobLifecycle(QueueMachine):
    def __init__(self) -> None:
        super().__init__("job-sm-", Observer())
        self.findings = Findings()
        logging.getLogger().addHandler(self.findings)
        self.jobs: dict[str, ModelJob] = {}
        #: Crashes and stalls per request digest, as the quarantine counts them.
        self.crashes: Counter[str] = Counter()
        #: Holds written without a job row: (created_at, expires_at) by hold id.
        self.orphans: dict[int, tuple[datetime, datetime]] = {}
        self.uncharged = 0  # deliveries whose capture was refused, over all processes
        #: Job row writes still to fail (those that start a job, unless a test says which),
        #: and how many failed in all.
        self.faults = self.failed_writes = 0
        self.failing: Callable[[str, Any], bool] = starts_a_job
        self.delays, retry.DELAYS = retry.DELAYS, (0, 0, 0)  # retries without the waits
        self.started_at = self.clock.time
        self.database: AsyncEngine = create_database(self.url)
        self.run(upgrade(self.database))
        self.run(self.boot())

    async def boot(self) -> None:
        """Start a bot process on the database, as ImagineBot.setup_hook does."""
        self.started_at = self.clock.time
        event.listen(self.database.sync_engine, "before_cursor_execute", self.fail_a_write)
        self.ledger = Ledger(self.database, self.clock, signup_credits=SIGNUP,
                             daily_credits=DAILY, min_account_age=timedelta(0),
                             hold_ttl=HOLD_TTL)
        self.engine = Engine(self.observer.violations)
        self.queue = JobQueue(self.database, TrustingLocalEngine(self.engine), self.ledger,
                              clock=self.clock,
                              observer=self.observer, per_user=PER_USER, global_limit=GLOBAL,
                              max_batch=MAX_BATCH, crash_limit=CRASH_LIMIT)
        await self.queue.start()
        await run_startup_housekeeping(self.ledger, self.queue)
        await settle()

    async def kill(self) -> None:
        await stop_tasks()
        self.uncharged += self.queue.uncharged_deliveries
        await self.ledger.close()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            retry.DELAYS = self.delays
            logging.getLogger().removeHandler(self.findings)

    def fail_a_write(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                     *args: Any) -> None:
        if self.faults and self.failing(statement, parameters):
            self.faults -= 1
            self.failed_writes += 1
            raise exc.OperationalError(statement, parameters,
                                       sqlite3.OperationalError("database is locked"))

    async def rows(self) -> dict[str, Row]:
        async with self.database.connect() as conn:
            result = await conn.execute(text(
                "SELECT id, state, end_reason, result IS NOT NULL AND result != 'null', "
                "attempts, delivered_free, hold_id, result_message_id FROM jobs"))
            return {job_id: Row(state, reason, bool(has_result), attempts, bool(free), *rest)
                    for job_id, state, reason, has_result, attempts, free, *rest in result}

    # -- users -----------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), cost=COSTS, request=st.sampled_from(REQUESTS))
    def enqueue(self, user: int, cost: int, request: GenerationRequest) -> None:
        # Recovery takes jobs in the order they were made (ties by their random ids): a
        # moment apart, as in life, so that the same steps run the same jobs.
        self.clock.advance(timedelta(milliseconds=1))
        available = self.run(self.ledger.touch(user))
        rows = self.run(self.rows())
        queued = [job for job_id, job in self.jobs.items()
                  if rows[job_id].state == JobState.QUEUED]
        digest = request_digest(request)
        refusal: Refusal | str | None = None
        if self.crashes[digest] >= CRASH_LIMIT:
            refusal = Refusal.QUARANTINED
        elif sum(job.new.owner_id == user for job in queued) >= PER_USER:
            refusal = Refusal.USER_LIMIT
        elif len(queued) >= GLOBAL:
            refusal = Refusal.GLOBAL_LIMIT
        elif cost > available:
            refusal = "credits"
        interaction = next(self.interactions)
        new = NewJob(request=request, kind="imagine", action="gen", owner_id=user, cost=cost,
                     application_id=1, interaction_id=interaction,
                     interaction_token=f"token-{interaction}", guild_id=None, channel_id=1,
                     upload_limit=10**6)
        try:
            job, _ = self.step(self.queue.enqueue(new))
        except QueueRefusal as refused:
            assert refused.reason == refusal
            return
        except InsufficientCredits:
            assert refusal == "credits"
            return
        assert refusal is None, f"enqueued, but expected {refusal}"
        assert job.id not in self.jobs
        self.jobs[job.id] = ModelJob(new, job.id, job.hold_id, digest,
                                     self.clock.time + HOLD_TTL if cost else None)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def replay_interaction(self, data: st.DataObject) -> None:
        """Discord delivers the same interaction again: the same job, nothing new held."""
        job = self.jobs[data.draw(st.sampled_from(list(self.jobs)))]
        again, _ = self.step(self.queue.enqueue(job.new))
        assert (again.id, again.hold_id) == (job.id, job.hold_id)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), who=st.sampled_from(["owner", "other", "admin"]),
          honoured=st.booleans())
    def cancel(self, data: st.DataObject, who: str, honoured: bool) -> None:
        job = self.jobs[data.draw(st.sampled_from(list(self.jobs)))]
        owner = job.new.owner_id
        actor = {"owner": owner, "admin": ADMIN,
                 "other": next(user for user in USERS if user != owner)}[who]
        row = self.run(self.rows())[job.id]
        self.engine.honour_cancel = honoured
        cancelled = self.step(self.queue.cancel(job.id, actor, admin=who == "admin"))
        allowed = who != "other"
        if row.status == JobState.QUEUED and allowed:
            assert cancelled
            job.expect = _ending(job, actor)
        elif row.status == JobState.RUNNING and allowed:
            assert cancelled
            if honoured:
                job.expect = _ending(job, actor)
            else:
                job.cancelled_by = actor
        else:  # someone else's, delivering or final: nothing happens
            assert not cancelled

    # -- the engine ------------------------------------------------------------------------------

    def running(self, data: st.DataObject) -> tuple[ModelJob, Stream]:
        job_id = data.draw(st.sampled_from(self.engine.live()))
        return self.jobs[job_id], self.engine.streams[job_id]

    @precondition(lambda self: self.engine.live())
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        job, stream = self.running(data)
        self.step(self.push(stream, Progress(job.id, 1, 2)))

    @precondition(lambda self: self.engine.live())
    @rule(data=st.data(), delivery=st.sampled_from(DELIVERIES), late=st.booleans())
    def finish(self, data: st.DataObject, delivery: str, late: bool) -> None:
        """The result comes; ``late``: the job outlived its hold, which it cannot capture."""
        job, stream = self.running(data)
        if late and job.expires is not None:
            self.clock.time = max(self.clock.time, job.expires)
        self.observer.plans[job.id] = delivery
        job.done = True
        job.expect = self.delivery_outcome(job, delivery)
        self.step(self.push(stream, self.done(job.id)))

    def done(self, job_id: str) -> Done:
        return Done(job_id, [ImageResult(self.directory / f"{job_id}.png", 1, 32, 32)], None, 0.1)

    @precondition(lambda self: self.engine.live())
    @rule(data=st.data(), kind=st.sampled_from(FAILURE_KINDS))
    def fail(self, data: st.DataObject, kind: str) -> None:
        job, stream = self.running(data)
        self.expect_failure(job, kind)
        self.step(self.push(stream, Failed(job.id, f"the engine says {kind}", kind)))  # type: ignore[arg-type]

    @precondition(lambda self: self.engine.live())
    @rule(kind=st.sampled_from(["crashed", "stalled"]))
    def worker_dies(self, kind: str) -> None:
        """The worker process crashes, or the watchdog kills it: every running job fails."""
        for job_id in self.engine.live():
            self.expect_failure(self.jobs[job_id], kind)
            self.engine.streams[job_id].push(Failed(job_id, f"the worker {kind}", kind))  # type: ignore[arg-type]
        self.step(asyncio.sleep(0))

    @precondition(lambda self: self.observer.hanging)
    @rule(data=st.data(), delivery=st.sampled_from(["ok", "undeliverable", "error"]))
    def delivery_ends(self, data: st.DataObject, delivery: str) -> None:
        job = self.jobs[data.draw(st.sampled_from(list(self.observer.hanging)))]
        self.observer.plans[job.id] = delivery
        job.expect = self.delivery_outcome(job, delivery)
        self.step(self.release(job.id))

    async def release(self, job_id: str) -> None:
        self.observer.hanging[job_id].set()

    @staticmethod
    async def push(stream: Stream, event: EngineEvent) -> None:
        stream.push(event)

    def delivery_outcome(self, job: ModelJob, delivery: str) -> tuple[str, str | None]:
        if delivery == "ok":
            return JobState.DELIVERED, None
        if delivery == "hang":
            return "delivering", None
        return JobState.FAILED, DELIVERED_AS[delivery]

    def expect_failure(self, job: ModelJob, kind: str) -> None:
        if kind == "cancelled":
            job.expect = _ending(job, job.cancelled_by)
            return
        if kind in ("crashed", "stalled"):
            self.crashes[job.digest] += 1
        job.expect = JobState.FAILED, FAILED_AS[kind]

    @rule(times=st.integers(min_value=1, max_value=2 * (len(retry.DELAYS) + 1)))
    def database_fails(self, times: int) -> None:
        """The dispatcher's next writes that start a job fail as a locked database does: the
        first ones are retried, past the retries the batch is put back and runs later.

        Only these: a failed write on the other paths is reported by the findings tests below.
        """
        self.faults = times

    # -- housekeeping and restarts ---------------------------------------------------------------

    @rule(advance=st.sampled_from(ADVANCES))
    def sweep(self, advance: timedelta) -> None:
        """The scheduler's sweep, some time later: expired holds no job needs, and orphans."""
        self.clock.advance(advance)
        now = self.clock.time
        cutoff = min(now - ORPHAN_AGE, self.started_at)
        self.step(release_stale_holds(self.ledger, self.queue))
        released = self.run(self.resolutions())
        for hold_id, (created, expires) in self.orphans.items():
            gone = expires <= now or created < cutoff
            assert (hold_id in released) == gone, f"orphan hold {hold_id}: released {gone}?"

    @rule(user=st.sampled_from(USERS), cost=HOLD_COSTS)
    def orphan_hold(self, user: int, cost: int) -> None:
        """A hold with no job: an older version died between the two, or a plugin's click."""
        available = self.run(self.ledger.touch(user))
        if cost > available:
            return
        key = f"gen:{next(self.interactions)}"
        hold_id = self.step(self.ledger.hold(user, cost, key))
        self.orphans[hold_id] = self.clock.time, self.clock.time + HOLD_TTL

    @rule(hard=st.booleans())
    def restart(self, hard: bool) -> None:
        """SIGTERM (running jobs are put back), or SIGKILL; then a new process recovers."""
        hard = hard or bool(self.observer.hanging)  # a clean stop would wait 5 s for them
        if hard:
            self.run(self.kill())
        else:
            for job_id in self.engine.live():  # the shutdown's cancel ends a cancel under way
                job = self.jobs[job_id]
                if job.cancelled_by is not None:
                    job.expect = _ending(job, job.cancelled_by)
            self.engine.honour_cancel = True
            self.run(self.queue.close(0))
            self.uncharged += self.queue.uncharged_deliveries
            self.run(self.ledger.close())
        self.database = create_database(self.url)
        self.run(self.boot())
        for job in self.jobs.values():
            job.cancelled_by = None  # a new process knows no one who cancelled
            if job.expect == ("delivering", None):
                job.expect = None

    # -- invariants ------------------------------------------------------------------------------

    async def resolutions(self) -> dict[int, list[tuple[str, str | None]]]:
        async with self.database.connect() as conn:
            found: dict[int, list[tuple[str, str | None]]] = {}
            for hold_id, kind, reason in await conn.execute(text(
                    "SELECT pending_id, kind, reason FROM ledger_transfers "
                    "WHERE pending_id IS NOT NULL")):
                found.setdefault(hold_id, []).append((kind, reason))
            return found

    async def negative_balances(self) -> list[Any]:
        async with self.database.connect() as conn:
            return list(await conn.execute(text(
                "SELECT user_id, posted, pending, available FROM ledger_users "
                "WHERE posted < 0 OR pending < 0 OR available < 0")))

    @invariant()
    def jobs_end_as_told_and_nothing_is_stuck(self) -> None:
        rows = self.run(self.rows())
        live = self.engine.live()
        assert set(rows) == set(self.jobs), "a job row appeared or was lost"
        for job_id, job in self.jobs.items():
            row = rows[job_id]
            assert row.hold_id == job.hold_id
            if job.final is not None:
                assert (row.state, row.end_reason, row.delivered_free) == job.final, \
                    f"job {job_id} changed after it ended"
                continue
            if job.expect is not None:
                assert (row.status, row.end_reason) == job.expect, f"job {job_id}"
            elif row.state in (JobState.FAILED, JobState.CANCELLED):
                self.explain(job, row)
            elif row.state == JobState.DELIVERED:
                assert job.done and self.observer.plans.get(job_id, "ok") == "ok"
            job.expect = None
            if row.state == JobState.DELIVERED:
                assert row.delivered_free == job.outlived_hold(self.clock.time), \
                    f"job {job_id} delivered free: {row.delivered_free}"
                assert self.observer.posts[job_id] == 1, f"job {job_id} posted twice"
                assert row.result_message_id == self.observer.messages[job_id]
            if row.state in (JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED):
                job.final = row.state, row.end_reason, row.delivered_free
                endings = self.observer.endings.get(job_id, [])
                assert len(endings) == (row.state != JobState.DELIVERED), \
                    f"job {job_id} was told of its end {len(endings)} times"
            # Nothing stuck: each job waits on something that will come.
            if row.status == JobState.QUEUED:
                assert live, f"job {job_id} is queued but nothing runs"
            elif row.status == JobState.RUNNING:
                assert job_id in live, f"job {job_id} is running but not in the engine"
            elif row.status == "delivering":
                assert job_id in self.observer.hanging, f"job {job_id} is never delivered"
        for job_id in live:
            assert rows[job_id].status == JobState.RUNNING, f"job {job_id} runs in vain"

    def explain(self, job: ModelJob, row: Row) -> None:
        """An ending no event of the test asked for must have a reason the model knows."""
        reason = row.end_reason
        if reason == EndReason.HOLD_EXPIRED:
            assert job.outlived_hold(self.clock.time), f"job {job.id}: hold released early"
        elif reason == EndReason.QUARANTINED:
            assert self.crashes[job.digest] >= CRASH_LIMIT
        elif reason == EndReason.RESTART_LIMIT:
            assert row.attempts >= MAX_ATTEMPTS
        elif reason in (EndReason.UNDELIVERABLE, EndReason.DELIVERY_FAILED):
            assert job.done and DELIVERED_AS[self.observer.plans[job.id]] == reason
        else:
            raise AssertionError(f"job {job.id} ended {row.state}/{reason} unasked")

    @invariant()
    def holds_resolve_once_and_capture_only_deliveries(self) -> None:
        rows = self.run(self.rows())
        resolutions = self.run(self.resolutions())
        for hold_id, resolved in resolutions.items():
            assert len(resolved) == 1, f"hold {hold_id} resolved {resolved}"
        free = 0
        for job_id, job in self.jobs.items():
            row = rows[job_id]
            if job.hold_id is None:  # free: nothing held, nothing charged
                assert not row.delivered_free
                continue
            resolved = resolutions.get(job.hold_id, [])
            kinds = [kind for kind, _ in resolved]
            if row.state in (JobState.QUEUED, JobState.RUNNING):
                assert kinds == [], f"job {job_id} is {row.status}, its hold {resolved}"
            elif row.state == JobState.DELIVERED and not row.delivered_free:
                assert kinds == ["capture"], f"job {job_id} delivered, its hold {resolved}"
            elif row.state == JobState.DELIVERED:
                free += 1
                assert resolved == [("release", "expired")], \
                    f"job {job_id} delivered free, its hold {resolved}"
            else:
                assert kinds == ["release"], f"job {job_id} {row.state}, its hold {resolved}"
        assert free == self.uncharged + self.queue.uncharged_deliveries

    @invariant()
    def ledger_audits_clean(self) -> None:
        """Expired holds that no sweep has released (orphans the next sweep will, holds kept
        for jobs still in the queue) are a state, not a fault: audit() says nothing of them."""
        assert self.run(self.ledger.audit()) == []
        assert self.run(self.negative_balances()) == []

    @invariant()
    def nothing_went_wrong_inside(self) -> None:
        expected = FAULT_LOGS if self.failed_writes else ()
        assert [record.getMessage() for record in self.findings.records
                if not str(record.msg).startswith(expected)] == []
        assert self.observer.violations == []


JobLifecycle.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
# Slow: 40 bots of up to 25 steps each, every step on a real SQLite file.
TestJobLifecycle = pytest.mark.slow(JobLifecycle.TestCase)


# -- findings ------------------------------------------------------------------------------------
# What the machine found, each in a few steps. Each fails today (strict xfail): whoever fixes one
# removes its mark, and the allowance the machine makes for it (named in the machine).


@contextmanager
def lifecycle() -> Iterator[JobLifecycle]:
    machine = JobLifecycle()
    try:
        yield machine
    finally:
        machine.teardown()


def any_job_write(statement: str, parameters: Any) -> bool:
    return statement.startswith("UPDATE jobs")


def test_audit_accepts_a_kept_hold() -> None:
    with lifecycle() as machine:
        machine.enqueue(USERS[0], 10, REQUESTS[0])  # running
        machine.sweep(HOLD_TTL + timedelta(minutes=1))  # kept: its job may still deliver
        assert machine.run(machine.ledger.audit()) == []


def test_an_ending_that_could_not_be_written_keeps_its_reason() -> None:
    with lifecycle() as machine:
        machine.enqueue(USERS[0], 10, REQUESTS[0])
        [job_id] = machine.engine.live()
        machine.failing, machine.faults = any_job_write, len(retry.DELAYS) + 1
        machine.step(machine.push(machine.engine.streams[job_id],
                                  Failed(job_id, "out of memory", "error")))
        row = machine.run(machine.rows())[job_id]
        assert (row.state, row.end_reason) == (JobState.FAILED, EndReason.FAILED)


def test_a_post_that_could_not_be_recorded_is_charged_without_a_restart() -> None:
    with lifecycle() as machine:
        machine.enqueue(USERS[0], 10, REQUESTS[0])
        [job_id] = machine.engine.live()
        machine.observer.plans[job_id] = "hang"  # posting: Discord has not answered yet
        machine.step(machine.push(machine.engine.streams[job_id], machine.done(job_id)))
        machine.failing, machine.faults = any_job_write, len(retry.DELAYS) + 1
        machine.observer.plans[job_id] = "ok"
        machine.step(machine.release(job_id))  # it answers; recording it fails for 2.6 s
        machine.sweep(timedelta(minutes=5))
        row = machine.run(machine.rows())[job_id]
        assert row.state == JobState.DELIVERED
