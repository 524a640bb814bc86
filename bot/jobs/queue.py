"""The persistent, fair job queue between Discord interactions and the engine.

Every job is a database row first and an engine request second: the row records its state,
parameters, hold and Discord ids, so after a restart queued jobs resume, jobs caught running are
run again (or refunded), and finished-but-undelivered results are delivered. Credits follow the
row: the hold is captured only after delivery and released on every other ending.

What users see is not this module's business; it reports to a :class:`JobObserver`
(``bot.generation`` implements it for Discord).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bot.jobs.fair import FairQueue
from bot.jobs.models import FINAL_STATES, Job, JobState
from engine.batching import batch_key
from engine.events import Done, Failed, Progress
from engine.request import GenerationRequest, RequestError

log = logging.getLogger(__name__)

#: A job caught running by a crash is tried again this many times in all, then refunded.
MAX_ATTEMPTS = 2
#: Seconds a job waits for its first message to be shown before updates go elsewhere.
MESSAGE_WAIT = 30.0
#: Seconds between two rounds of "you moved up the queue" updates (one edit per moved job).
POSITION_INTERVAL = 2.0


class QueueFull(Exception):
    """The user's or everyone's queue limit; ``str()`` is meant for the user."""


class Ledger(Protocol):
    """The part of ``bot.ledger.Ledger`` the queue uses."""

    async def capture(self, hold_id: int) -> bool: ...

    async def release(self, hold_id: int) -> bool: ...

    async def hold_status(self, hold_id: int) -> str: ...


class Engine(Protocol):
    """The part of ``engine.client.EngineClient`` the queue uses."""

    def submit(self, request: GenerationRequest) -> Any: ...

    async def cancel(self, job_id: str) -> bool: ...


class JobObserver(Protocol):
    """Shows a job's life to its user; errors raised here are logged, never fatal."""

    async def resumed(self, job: Job, position: int) -> None:
        """A queued job picked up again after a restart (or put back at shutdown)."""

    async def paused(self, job: Job) -> None:
        """A running job stopped by the shutdown; it runs again after the restart."""

    async def moved(self, job: Job, position: int) -> None:
        """A queued job's place changed because jobs ahead of it started or left."""

    async def started(self, job: Job) -> None: ...

    async def progress(self, job: Job, event: Progress) -> None: ...

    async def deliver(self, job: Job) -> None:
        """Post the result; raise :class:`DeliveryError` when it cannot be delivered."""

    async def ended(self, job: Job) -> None:
        """The job failed or was cancelled; ``job.error`` says why, for the user."""


class DeliveryError(Exception):
    """The result exists but cannot be shown (too large even re-encoded, message gone...)."""


@dataclass(frozen=True)
class NewJob:
    """Everything a job row needs that the caller knows (start_generation fills it)."""

    request: GenerationRequest
    kind: str
    action: str
    owner_id: int
    hold_id: int
    cost: int
    application_id: int
    interaction_id: int
    interaction_token: str
    guild_id: int | None
    channel_id: int
    upload_limit: int
    parent_job_id: str | None = None

    @property
    def request_key(self) -> str:
        return f"{self.action}:{self.interaction_id}"


class JobQueue:
    def __init__(self, database: AsyncEngine, engine: Engine, ledger: Ledger, *,
                 clock: Callable[[], datetime], observer: JobObserver, per_user: int,
                 global_limit: int, max_batch: int) -> None:
        self._sessions = async_sessionmaker(database, expire_on_commit=False)
        self._engine = engine
        self._ledger = ledger
        self._clock = clock
        self.observer = observer
        self._per_user = per_user
        self._global = global_limit
        self._max_batch = max_batch
        self._fair = FairQueue()
        self._queued: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._cancelled_by: dict[str, int] = {}
        self._shown: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closing = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._shown_positions: dict[str, int] = {}
        self._reordered = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with self._sessions() as session:
            return await session.get(Job, job_id)

    async def list_jobs(self, state: str | None = None, user_id: int | None = None,
                        limit: int = 20) -> list[Job]:
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        if user_id is not None:
            query = query.where(Job.owner_id == user_id)
        async with self._sessions() as session:
            return list((await session.scalars(query)).all())

    def position(self, job_id: str) -> int | None:
        """1-based place among queued jobs, None once it left the queue."""
        return self._fair.position(job_id) if job_id in self._fair else None

    @property
    def accepting(self) -> bool:
        return not self._closing

    # -- adding -----------------------------------------------------------------------------------

    def ensure_capacity(self, user_id: int) -> None:
        """Refuse early, before any credits are held, when the queue limits are reached."""
        if self._closing:
            raise QueueFull("The bot is restarting and takes no new jobs right now; please try "
                            "again in a minute.")
        if self._fair.count(user_id) >= self._per_user:
            raise QueueFull(f"You already have {self._per_user} jobs waiting; please wait for "
                            "one to start before adding another.")
        if len(self._fair) >= self._global:
            raise QueueFull("The queue is full right now; please try again in a few minutes.")

    async def enqueue(self, new: NewJob) -> tuple[Job, int]:
        """Store and queue a job; the same interaction twice gives back the first job."""
        async with self._lock:
            existing = await self._by_key(new.request_key)
            if existing is not None:
                return existing, self.position(existing.id) or 0
            self.ensure_capacity(new.owner_id)
            job_id = uuid.uuid4().hex
            job = Job(
                id=job_id, request_key=new.request_key, state=JobState.QUEUED, kind=new.kind,
                action=new.action, owner_id=new.owner_id, parent_job_id=new.parent_job_id,
                params=new.request.model_copy(update={"job_id": job_id}).model_dump(mode="json"),
                hold_id=new.hold_id, cost=new.cost, application_id=new.application_id,
                interaction_id=new.interaction_id, interaction_token=new.interaction_token,
                guild_id=new.guild_id, channel_id=new.channel_id, message_id=None,
                upload_limit=new.upload_limit, created_at=self._clock(), attempts=0)
            try:
                async with self._sessions.begin() as session:
                    session.add(job)
            except IntegrityError:  # the same interaction raced in through another path
                existing = await self._by_key(new.request_key)
                if existing is None:
                    raise
                return existing, self.position(existing.id) or 0
            self._shown[job_id] = asyncio.Event()
            self._push(job)
            position = self._fair.position(job_id)
            self._shown_positions[job_id] = position
            return job, position

    async def attach_message(self, job_id: str, message_id: int | None) -> None:
        """The job's message now exists (None: it could not be shown); updates may follow."""
        if message_id is not None:
            job = self._queued.get(job_id) or self._running.get(job_id)
            async with self._sessions.begin() as session:
                await session.execute(update(Job).where(Job.id == job_id)
                                      .values(message_id=message_id))
            if job is not None:
                job.message_id = message_id
        if (shown := self._shown.pop(job_id, None)) is not None:
            shown.set()

    async def message_ready(self, job: Job) -> Job:
        """Wait until the job's first message was shown; returns the row with its message id."""
        shown = self._shown.get(job.id)
        if shown is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shown.wait(), MESSAGE_WAIT)
        return self._queued.get(job.id) or self._running.get(job.id) or job

    # -- cancelling -------------------------------------------------------------------------------

    async def cancel(self, job_id: str, actor_id: int, *, admin: bool = False) -> bool:
        """Cancel a queued or running job of ``actor_id`` (any job when ``admin``)."""
        async with self._lock:
            job = self._queued.get(job_id) or self._running.get(job_id)
            if job is None or (not admin and job.owner_id != actor_id):
                return False
            self._cancelled_by[job_id] = actor_id
            if job_id in self._queued:
                self._fair.remove(job_id)
                del self._queued[job_id]
                self._reordered.set()
                queued = True
            else:
                queued = False
        if queued:
            await self._end(job, JobState.CANCELLED, _cancel_message(job, actor_id))
            return True
        if await self._engine.cancel(job_id):
            return True
        self._cancelled_by.pop(job_id, None)  # it finished meanwhile and is being delivered
        return False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what the last run left, then start taking jobs."""
        await self._recover()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="job-dispatcher")
        self._announcer = asyncio.create_task(self._announce_positions(), name="job-positions")

    async def close(self, grace: float) -> None:
        """Take no new jobs; let running ones finish for ``grace`` seconds, then put them back.

        Jobs put back stay queued in the database with their holds and run after the restart.
        """
        self._closing = True
        self._wake.set()
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
        if self._dispatcher is not None:
            done, _ = await asyncio.wait({self._dispatcher}, timeout=grace)
            if not done:
                for job_id in list(self._running):
                    await self._engine.cancel(job_id)
                await asyncio.wait({self._dispatcher}, timeout=10)
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=max(grace, 5.0))
        for task in list(self._deliveries):
            task.cancel()

    async def _recover(self) -> None:
        async with self._sessions() as session:
            leftovers = list((await session.scalars(
                select(Job).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                .order_by(Job.created_at, Job.id))).all())
        resumed: list[Job] = []
        for job in leftovers:
            if job.state == JobState.RUNNING and job.result is not None:
                log.info("job %s finished before the restart; delivering it now", job.id)
                self._running[job.id] = job
                self._start_delivery(job)
            elif job.state == JobState.RUNNING and job.attempts >= MAX_ATTEMPTS:
                await self._end(job, JobState.FAILED, "This job could not be finished after "
                                "the bot restarted, so it was stopped. You were not charged.")
            else:
                if job.state == JobState.RUNNING:
                    log.info("job %s was running at the restart; running it again", job.id)
                    await self._save(job, state=JobState.QUEUED, started_at=None)
                self._push(job)
                resumed.append(job)
        for job in resumed:
            position = self._fair.position(job.id)
            self._shown_positions[job.id] = position
            await self._notify(self.observer.resumed, job, position)
        if leftovers:
            log.info("recovered %d queued and %d delivering jobs", len(resumed),
                     len(leftovers) - len(resumed))

    # -- running ----------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._fair and not self._closing:
                async with self._lock:
                    ids = self._fair.pop_batch(lambda i: batch_key(self._queued[i].request),
                                               self._max_batch,
                                               lambda i: self._queued[i].image_count)
                    jobs = [self._queued.pop(job_id) for job_id in ids]
                    self._running.update((job.id, job) for job in jobs)
                    self._reordered.set()
                await self._run_batch(jobs)

    async def _announce_positions(self) -> None:
        """Tell waiting users when they move up, at most one round per POSITION_INTERVAL.

        A separate task, so slow message edits never hold up the dispatcher.
        """
        while True:
            await self._reordered.wait()
            self._reordered.clear()
            order = self._fair.order()
            for gone in self._shown_positions.keys() - set(order):
                del self._shown_positions[gone]
            for position, job_id in enumerate(order, start=1):
                job = self._queued.get(job_id)
                if (job is None or job.message_id is None
                        or self._shown_positions.get(job_id) == position):
                    continue
                self._shown_positions[job_id] = position
                await self._notify(self.observer.moved, job, position)
            await asyncio.sleep(POSITION_INTERVAL)

    async def _run_batch(self, jobs: Sequence[Job]) -> None:
        streams: list[tuple[Job, Any]] = []
        for job in jobs:
            if not await self._hold_is_live(job):
                await self._end(job, JobState.FAILED, "This job waited so long that its credit "
                                "hold expired, so it was not run. You were not charged.")
                continue
            await self._save(job, state=JobState.RUNNING, started_at=self._clock(),
                             attempts=job.attempts + 1)
            try:
                # Submitting all before reading any stream lets the engine batch them.
                streams.append((job, self._engine.submit(job.request)))
            except RequestError as error:
                await self._end(job, JobState.FAILED, f"This job can no longer run: {error}. "
                                "You were not charged.")
        for job, _ in streams:
            await self._notify(self.observer.started, job)
        await asyncio.gather(*(self._follow(job, stream) for job, stream in streams))

    async def _follow(self, job: Job, stream: Any) -> None:
        try:
            async for event in stream:
                if isinstance(event, Progress):
                    await self._notify(self.observer.progress, job, event)
                elif isinstance(event, Done):
                    await self._save(job, result=_result(event))
                    self._start_delivery(job)
                elif isinstance(event, Failed):
                    await self._failed(job, event)
        except Exception:
            log.exception("job %s: lost track of the engine", job.id)
            await self._end(job, JobState.FAILED, "Something went wrong while making your "
                            "images. You were not charged; please try again.")

    async def _failed(self, job: Job, event: Failed) -> None:
        actor = self._cancelled_by.pop(job.id, None)
        if event.kind == "cancelled" and actor is None and self._closing:
            # Stopped by the shutdown, not by anyone: it runs again after the restart.
            await self._save(job, state=JobState.QUEUED, started_at=None,
                             attempts=max(0, job.attempts - 1))
            self._running.pop(job.id, None)
            await self._notify(self.observer.paused, job)
            return
        if event.kind == "cancelled":
            await self._end(job, JobState.CANCELLED, _cancel_message(job, actor))
        elif event.kind == "crashed":
            await self._end(job, JobState.FAILED, "The image generator crashed while making "
                            "your images. You were not charged; please try again.")
        elif event.kind == "invalid":
            await self._end(job, JobState.FAILED, f"{event.reason}. You were not charged.")
        else:
            await self._end(job, JobState.FAILED, "Making your images failed "
                            f"({event.reason}). You were not charged; please try again.")

    def _start_delivery(self, job: Job) -> None:
        task = asyncio.create_task(self._deliver(job), name=f"deliver-{job.id}")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, job: Job) -> None:
        try:
            await self.observer.deliver(job)
        except DeliveryError as error:
            await self._end(job, JobState.FAILED, f"{error} You were not charged.")
            return
        except asyncio.CancelledError:
            raise  # shutdown: the row keeps its result and is delivered after the restart
        except Exception:
            log.exception("job %s: delivery failed", job.id)
            await self._end(job, JobState.FAILED, "Your images were made but could not be "
                            "posted. You were not charged; please try again.")
            return
        try:
            await self._ledger.capture(job.hold_id)
            await self._save(job, state=JobState.DELIVERED, finished_at=self._clock(),
                             interaction_token=None)
        except Exception:
            # The row keeps its result: the next start delivers it again and captures then.
            log.exception("job %s: delivered but not recorded", job.id)
        self._cancelled_by.pop(job.id, None)
        self._running.pop(job.id, None)

    async def _end(self, job: Job, state: JobState, message: str) -> None:
        """Every ending other than delivery: credits back first, then tell the user."""
        await self._ledger.release(job.hold_id)
        await self._save(job, state=state, error=message, finished_at=self._clock())
        self._running.pop(job.id, None)
        self._queued.pop(job.id, None)
        self._cancelled_by.pop(job.id, None)
        await self._notify(self.observer.ended, job)
        await self._save(job, interaction_token=None)

    # -- helpers ----------------------------------------------------------------------------------

    def _push(self, job: Job) -> None:
        self._queued[job.id] = job
        self._fair.push(job.owner_id, job.id)
        self._wake.set()

    async def _hold_is_live(self, job: Job) -> bool:
        return await self._ledger.hold_status(job.hold_id) == "pending"

    async def _by_key(self, key: str) -> Job | None:
        async with self._sessions() as session:
            return await session.scalar(select(Job).where(Job.request_key == key))

    async def _save(self, job: Job, **values: Any) -> None:
        async with self._sessions.begin() as session:
            await session.execute(update(Job).where(Job.id == job.id).values(**values))
        for name, value in values.items():
            setattr(job, name, value)

    async def _notify(self, hook: Callable[..., Any], job: Job, *args: Any) -> None:
        try:
            await hook(job, *args)
        except Exception:
            log.exception("job %s: could not update its message (%s)", job.id, hook.__name__)

    async def prune(self, older_than: datetime) -> list[str]:
        """Delete finished job rows created before ``older_than``; returns their ids."""
        async with self._sessions.begin() as session:
            ids = list((await session.scalars(
                delete(Job).where(Job.state.in_(list(FINAL_STATES)),
                                  Job.created_at < older_than).returning(Job.id))).all())
        return ids


def _result(event: Done) -> dict[str, Any]:
    return {
        "images": [{"path": str(image.path), "seed": image.seed, "width": image.width,
                    "height": image.height} for image in event.images],
        "grid": str(event.grid) if event.grid is not None else None,
        "seconds": event.seconds,
        "metadata": event.metadata,
    }


def _cancel_message(job: Job, actor_id: int | None) -> str:
    if actor_id is None or actor_id == job.owner_id:
        return "Cancelled. You were not charged."
    return f"Cancelled by <@{actor_id}> (an administrator). You were not charged."
