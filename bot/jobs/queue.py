"""The persistent, fair job queue between Discord interactions and the engine.

Every job is a database row first and an engine request second: the row records its state,
parameters, hold and Discord ids, so after a restart queued jobs resume, jobs caught running are
run again (or refunded), and finished-but-undelivered results are delivered. Credits follow the
row: the hold is written in the same transaction as the row, captured only after delivery and
released on every other ending, and no sweep releases the hold of a job the queue still tracks.
A free job (a price of 0) holds nothing: its row has no hold, and each of those steps skips it.

Engines run jobs through the seam of ``engine.dispatch``: the queue holds the slots its engine
offers (one per free worker), gives each the fairest batch it can run, preferring a worker that
has the model loaded, and follows each batch in a task of its own, so N free workers run N
batches at once. A job the engine lost (its worker went away) is put back through its row, at
the front of its user's turn, and a result is accepted only from the attempt that is running
(``JobStore.accept_result``), so a replayed or zombie result is never delivered or charged.

Nothing stops the queue for good: a batch that raises is put back (or failed and refunded once
its jobs used their attempts), database calls are retried, and the dispatcher and the task that
takes slots are restarted if they die anyway (``supervise.py``). What users see is not this
module's business: it reports to a :class:`~bot.jobs.api.JobObserver` (``bot.generation``
implements it for Discord), and ends jobs with an :class:`~bot.jobs.models.EndReason` that the
observer puts into words.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.api import (
    DeliveryError,
    Ending,
    JobObserver,
    Ledger,
    NewJob,
    QueueRefusal,
    Refusal,
)
from bot.jobs.fair import FairQueue
from bot.jobs.models import EndReason, Job, JobState
from bot.jobs.quarantine import Quarantine, request_digest
from bot.jobs.retry import persisting, retrying
from bot.jobs.store import JobStore
from bot.jobs.supervise import stop, supervised
from bot.ledger import HoldInfo
from engine.batching import batch_key
from engine.dispatch import Dispatch, Engine, Slot
from engine.events import Done, EngineEvent, Failed, Progress
from engine.request import GenerationRequest, RequestError

log = logging.getLogger(__name__)

#: A job caught running by a crash, or lost by the engine, is tried this many times in all,
#: then refunded; a batch that raises puts its jobs back until they have used as many attempts.
MAX_ATTEMPTS = 2
#: Seconds a job waits for its first message to be shown before updates go elsewhere.
MESSAGE_WAIT = 30.0
#: Seconds between two rounds of "you moved up the queue" updates (one edit per moved job).
POSITION_INTERVAL = 2.0
#: A pending hold older than this with no job row is an orphan (see release_orphan_holds).
ORPHAN_AGE = timedelta(minutes=5)


@dataclass(eq=False)
class Tracked:
    """What the queue knows of one job from queued until it is delivered or ended."""

    job: Job
    #: The request's quarantine digest.
    digest: str
    #: Set once the job's first message exists (or could not be shown).
    shown: asyncio.Event = field(default_factory=asyncio.Event)
    #: The queue position its message shows.
    position_shown: int | None = None
    #: Who cancelled it while it ran; the engine reports its end later.
    cancelled_by: int | None = None
    #: Its engine events, from submission until the engine's last word.
    stream: AsyncIterator[EngineEvent] | None = None

    @functools.cached_property
    def request(self) -> GenerationRequest:
        """The stored request (parsed once: every pick asks each slot whether it can run it)."""
        return self.job.request


class JobQueue:
    def __init__(self, database: AsyncEngine, engine: Engine, ledger: Ledger, *,
                 clock: Callable[[], datetime], observer: JobObserver, per_user: int,
                 global_limit: int, max_batch: int, crash_limit: int) -> None:
        self._store = JobStore(database)
        self._engine = engine
        self._ledger = ledger
        self._clock = clock
        self.observer = observer
        self._per_user = per_user
        self._global = global_limit
        self._max_batch = max_batch
        self._quarantine = Quarantine(crash_limit)
        self._fair = FairQueue()
        #: Every job from enqueue until delivered or ended; queued ones are also in _fair.
        self._jobs: dict[str, Tracked] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._reordered = asyncio.Event()
        #: Set by close(): no new jobs, and supervised tasks stop instead of restarting.
        self._closing = asyncio.Event()
        self._started_at: datetime | None = None
        #: Slots the engine offered that no batch has taken yet, in the order offered.
        self._slots: dict[str, Slot] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._slot_taker: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        #: One task per batch submitted, following its jobs until the engine's last word.
        self._batches: set[asyncio.Task[None]] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        #: Results delivered whose hold could no longer be captured (logged as errors).
        self.uncharged_deliveries = 0

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        return await self._store.get(job_id)

    async def list_jobs(self, state: str | None = None, user_id: int | None = None,
                        limit: int = 20) -> list[Job]:
        return await self._store.list_jobs(state, user_id, limit)

    def position(self, job_id: str) -> int | None:
        """1-based place among queued jobs, None once it left the queue."""
        return self._fair.position(job_id) if job_id in self._fair else None

    @property
    def accepting(self) -> bool:
        return not self._closing.is_set()

    # -- adding -----------------------------------------------------------------------------------

    def admit(self, user_id: int, request: GenerationRequest) -> None:
        """Refuse early, before any credits are held: shutdown, quarantine, queue limits."""
        if self._closing.is_set():
            raise QueueRefusal(Refusal.CLOSING)
        crashes = self._quarantine.crashes(request_digest(request))
        if crashes >= self._quarantine.limit:
            raise QueueRefusal(Refusal.QUARANTINED, crashes)
        if self._fair.count(user_id) >= self._per_user:
            raise QueueRefusal(Refusal.USER_LIMIT, self._per_user)
        if len(self._fair) >= self._global:
            raise QueueRefusal(Refusal.GLOBAL_LIMIT, self._global)

    async def enqueue(self, new: NewJob) -> tuple[Job, int]:
        """Hold the credits and store the job in one transaction, then queue it.

        A free job holds nothing. The same interaction twice gives back the first job. Raises
        QueueRefusal, or the ledger's InsufficientCredits; either way nothing is held.
        """
        async with self._lock:
            existing = await self._store.by_key(new.request_key)
            if existing is not None:
                return existing, self.position(existing.id) or 0
            self.admit(new.owner_id, new.request)
            try:
                async with self._ledger.transaction() as connection:
                    hold_id = None if new.cost == 0 else await self._ledger.hold(
                        new.owner_id, new.cost, new.request_key, connection=connection)
                    job = self._row(new, hold_id)
                    await self._store.insert(connection, job)
            except IntegrityError:  # the same interaction raced in through another path
                existing = await self._store.by_key(new.request_key)
                if existing is None:
                    raise
                return existing, self.position(existing.id) or 0
            tracked = Tracked(job, request_digest(new.request))
            self._push(tracked)
            tracked.position_shown = self._fair.position(job.id)
            return job, tracked.position_shown

    def _row(self, new: NewJob, hold_id: int | None) -> Job:
        job_id = uuid.uuid4().hex
        return Job(
            id=job_id, request_key=new.request_key, state=JobState.QUEUED, kind=new.kind,
            action=new.action, owner_id=new.owner_id, parent_job_id=new.parent_job_id,
            params=new.request.model_copy(update={"job_id": job_id}).model_dump(mode="json"),
            hold_id=hold_id, cost=new.cost, application_id=new.application_id,
            interaction_id=new.interaction_id, interaction_token=new.interaction_token,
            guild_id=new.guild_id, channel_id=new.channel_id, message_id=None,
            upload_limit=new.upload_limit, created_at=self._clock(), attempts=0,
            delivered_free=False)

    async def attach_message(self, job_id: str, message_id: int | None) -> None:
        """The job's message now exists (None: it could not be shown); updates may follow."""
        tracked = self._jobs.get(job_id)
        if message_id is not None:
            await retrying(self._store.update, job_id, message_id=message_id)
            if tracked is not None:
                tracked.job.message_id = message_id
                # The announcer skips a job without a message id: a move while the id was
                # being recorded would otherwise never be shown.
                self._reordered.set()
        if tracked is not None:
            tracked.shown.set()

    async def message_ready(self, job: Job) -> Job:
        """Wait until the job's first message was shown; returns the row with its message id."""
        tracked = self._jobs.get(job.id)
        if tracked is None:
            return job
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tracked.shown.wait(), MESSAGE_WAIT)
        return tracked.job

    # -- cancelling -------------------------------------------------------------------------------

    async def cancel(self, job_id: str, actor_id: int, *, admin: bool = False) -> bool:
        """Cancel a queued or running job of ``actor_id`` (any job when ``admin``)."""
        async with self._lock:
            tracked = self._jobs.get(job_id)
            if tracked is None or (not admin and tracked.job.owner_id != actor_id):
                return False
            tracked.cancelled_by = actor_id
            queued = self._fair.remove(job_id)
            if queued:
                self._reordered.set()
        if queued:
            await self._end(tracked, _cancelled(tracked.job, actor_id))
            return True
        if await self._engine.cancel(job_id):
            return True
        tracked.cancelled_by = None  # it finished meanwhile and is being delivered
        return False

    # -- holds ------------------------------------------------------------------------------------

    def keeps_hold(self, hold: HoldInfo) -> bool:
        """Whether ``hold`` belongs to a job in the queue, which alone may resolve it.

        The expiry sweep passes this as ``keep``, so it never releases the hold of a job that
        is queued, running or being delivered.
        """
        return any(tracked.job.hold_id == hold.id for tracked in self._jobs.values())

    async def release_orphan_holds(self) -> int:
        """Release pending holds that no job row explains; returns how many.

        A job's hold and row are written in one transaction, so a generation hold without a
        row was written before that was so, by a process that died in between. A plugin's
        priced button holds under its own key for the length of one click and never has a
        row; such a hold is live only in the process that took it, so only holds older than
        this process are released (and than ORPHAN_AGE, for a click of a process just gone).
        """
        assert self._started_at is not None, "start() first"
        cutoff = min(self._clock() - ORPHAN_AGE, self._started_at)
        holds = await self._ledger.unresolved_holds(created_before=cutoff)
        known = await self._store.keys_with_jobs({hold.key for hold in holds})
        released = 0
        for hold in holds:
            if hold.key not in known and await self._ledger.release(hold.id):
                released += 1
                log.warning("released orphan hold %s: %s credits of user %s under key %r, "
                            "held since %s with no job", hold.id, hold.amount, hold.user_id,
                            hold.key, hold.created_at)
        return released

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what the last run left, then start taking jobs."""
        self._started_at = self._clock()
        self._quarantine.load(await self._store.crash_counts())
        await self._recover()
        self._slot_taker = supervised("job-slots", self._take_slots, self._closing)
        self._dispatcher = supervised("job-dispatcher", self._dispatch, self._closing,
                                      on_restart=self._wake.set)
        self._announcer = supervised("job-positions", self._announce_positions, self._closing)

    async def close(self, grace: float) -> None:
        """Take no new jobs; let running ones finish for ``grace`` seconds, then put them back.

        Jobs put back stay queued in the database with their holds and run after the restart.
        Never raises: whatever a task died of was logged when it died, and shutdown must end.
        """
        self._closing.set()
        self._wake.set()
        for task in (self._announcer, self._slot_taker, self._dispatcher):
            if task is not None:
                await stop(task)
        if self._batches:
            _, running = await asyncio.wait(self._batches, timeout=grace)
            if running:
                for tracked in list(self._jobs.values()):
                    if tracked.stream is not None:
                        with contextlib.suppress(Exception):
                            await self._engine.cancel(tracked.job.id)
                await asyncio.wait(running, timeout=10)
            for task in list(self._batches):
                await stop(task)
        for slot in self._slots.values():  # held, unused: the engine may offer them again
            with contextlib.suppress(Exception):
                self._engine.release_slot(slot)
        self._slots.clear()
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=max(grace, 5.0))
        for task in list(self._deliveries):
            await stop(task)

    async def _recover(self) -> None:
        resumed: list[Tracked] = []
        delivering = 0
        for job in await self._store.unfinished():
            tracked = Tracked(job, request_digest(job.request))
            tracked.shown.set()  # its message exists, or never will
            self._jobs[job.id] = tracked
            if job.state == JobState.RUNNING and job.result is not None:
                if job.result_message_id is None:
                    log.info("job %s finished before the restart; delivering it now", job.id)
                else:
                    log.info("job %s was posted before the restart (message %s); charging "
                             "it now", job.id, job.result_message_id)
                self._start_delivery(tracked)
                delivering += 1
            elif job.state == JobState.RUNNING and job.attempts >= MAX_ATTEMPTS:
                await self._end(tracked, Ending(EndReason.RESTART_LIMIT))
            else:
                if job.state == JobState.RUNNING:
                    log.info("job %s was running at the restart; running it again", job.id)
                    await self._store.save(job, state=JobState.QUEUED, started_at=None)
                self._push(tracked)
                resumed.append(tracked)
        for tracked in resumed:
            tracked.position_shown = self._fair.position(tracked.job.id)
            await self._notify(self.observer.resumed, tracked.job, tracked.position_shown)
        if resumed or delivering:
            log.info("recovered %d queued and %d delivering jobs", len(resumed), delivering)

    # -- running ----------------------------------------------------------------------------------

    async def _take_slots(self) -> None:
        """Hold every slot the engine offers until a batch takes it: with all free workers in
        view, each batch goes to the best of them (see ``_pick``)."""
        while True:
            slot = await self._engine.acquire_slot()
            self._slots[slot.id] = slot
            self._wake.set()

    async def _dispatch(self) -> None:
        self._wake.set()  # a restarted dispatcher looks at what waits at once
        while not self._closing.is_set():
            await self._wake.wait()
            self._wake.clear()
            while not self._closing.is_set() and (taken := await self._take_batch()):
                slot, batch = taken
                task = asyncio.create_task(self._run_batch(slot, batch),
                                           name=f"batch-{batch[0].job.id}")
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)

    async def _take_batch(self) -> tuple[Slot, list[Tracked]] | None:
        """The fairest batch a held slot can run, and that slot; None if no slot fits a job."""
        async with self._lock:
            slot = self._pick()
            if slot is None:
                return None
            ids = self._fair.pop_batch(
                self._batch_key, min(self._max_batch, slot.max_batch),
                lambda job_id: self._jobs[job_id].job.image_count,
                lambda job_id: slot.can_run(self._jobs[job_id].request))
            del self._slots[slot.id]  # only now: a pick that raised leaves the slot held
            self._reordered.set()
            return slot, [self._jobs[job_id] for job_id in ids]

    def _pick(self) -> Slot | None:
        """The slot for the fairest job that a held slot can run: one whose worker has the
        job's model loaded if there is one, else the first offered that can run it."""
        if not self._slots or not self._fair:
            return None
        slots = list(self._slots.values())
        head = self._fair.first(lambda job_id: any(
            slot.can_run(self._jobs[job_id].request) for slot in slots))
        if head is None:
            return None
        request = self._jobs[head].request
        fitting = [slot for slot in slots if slot.can_run(request)]
        return next((slot for slot in fitting if request.model in slot.loaded), fitting[0])

    def _batch_key(self, job_id: str) -> Hashable | None:
        """What jobs may share a batch with; None for a request that crashed the worker before,
        which runs alone so that it cannot take other users' jobs down with it again."""
        tracked = self._jobs[job_id]
        if self._quarantine.suspect(tracked.digest):
            return None
        return batch_key(tracked.request)

    async def _run_batch(self, slot: Slot, batch: Sequence[Tracked]) -> None:
        """Start the batch on ``slot`` and follow it; a batch that raises is put back. A slot
        that nothing was submitted to is held again for the next batch."""
        submitted = False
        try:
            runnable = [tracked for tracked in batch if await self._runnable(tracked)]
            for tracked in runnable:
                await retrying(self._store.save, tracked.job, state=JobState.RUNNING,
                               started_at=self._clock(), attempts=tracked.job.attempts + 1)
            if runnable:
                submitted = True
                streams = self._engine.submit(
                    [Dispatch(tracked.request, tracked.job.attempts) for tracked in runnable],
                    slot)
                for tracked, stream in zip(runnable, streams, strict=True):
                    tracked.stream = stream
                for tracked in runnable:
                    await self._notify(self.observer.started, tracked.job)
                outcomes = await asyncio.gather(
                    *(self._follow(tracked, stream, tracked.job.attempts)
                      for tracked, stream in zip(runnable, streams, strict=True)),
                    return_exceptions=True)
                errors = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
                if errors:
                    raise ExceptionGroup("following the engine failed", errors)
        except Exception:
            log.exception("batch of jobs %s failed; putting them back",
                          ", ".join(tracked.job.id for tracked in batch))
            await self._salvage(batch)
        finally:
            if not submitted:
                self._slots[slot.id] = slot
                self._wake.set()

    async def _runnable(self, tracked: Tracked) -> bool:
        """Whether a job just taken from the queue may still run; ends it if not."""
        if self._quarantine.refused(tracked.digest):
            await self._end(tracked, Ending(EndReason.QUARANTINED))
            return False
        try:
            self._engine.validate(tracked.request)
        except RequestError as invalid:
            await self._end(tracked, Ending(EndReason.NO_LONGER_VALID, str(invalid)))
            return False
        if tracked.job.hold_id is None:
            return True  # free: no hold to expire
        status = await retrying(self._ledger.hold_status, tracked.job.hold_id)
        if status != "pending":
            await self._end(tracked, Ending(EndReason.HOLD_EXPIRED, f"hold {status}"))
            return False
        return True

    async def _follow(self, tracked: Tracked, stream: AsyncIterator[EngineEvent],
                      attempt: int) -> None:
        """Attempt ``attempt`` of the job, to the end of its stream. Its result counts only if
        that attempt is still the running one (``accept_result``); so does its ending."""
        async for event in stream:
            if isinstance(event, Progress):
                if self._current(tracked, attempt):
                    await self._notify(self.observer.progress, tracked.job, event)
            elif isinstance(event, Done):
                if tracked.stream is stream:
                    tracked.stream = None
                result = _result(event)
                if not await retrying(self._store.accept_result, tracked.job.id, attempt,
                                      result):
                    log.warning("job %s: a result of attempt %d was not accepted (a replay, "
                                "or that attempt no longer runs)", tracked.job.id, attempt)
                    continue
                tracked.job.result = result
                self._start_delivery(tracked)
            elif isinstance(event, Failed):
                if tracked.stream is stream:
                    tracked.stream = None
                if not self._current(tracked, attempt):
                    log.warning("job %s: attempt %d ended (%s) when it was no longer the "
                                "running one; ignored", tracked.job.id, attempt, event.kind)
                    continue
                await self._failed(tracked, attempt, event)

    def _current(self, tracked: Tracked, attempt: int) -> bool:
        """Whether ``attempt`` is the job's attempt running now, with no result yet."""
        job = tracked.job
        return (self._jobs.get(job.id) is tracked and job.state == JobState.RUNNING
                and job.attempts == attempt and job.result is None)

    async def _salvage(self, batch: Sequence[Tracked]) -> None:
        """After a batch raised: put back each of its jobs still in limbo, or end it if it has
        used its attempts. Never raises; a job it cannot settle waits for the next start."""
        for tracked in reversed(batch):  # each goes back in front: the batch keeps its order
            job = tracked.job
            if self._jobs.get(job.id) is not tracked or job.id in self._fair or job.result:
                continue  # ended, already back in the queue, or being delivered
            try:
                if tracked.stream is not None:  # stop it and let the engine have its last word
                    stream, tracked.stream = tracked.stream, None
                    await self._engine.cancel(job.id)
                    async for _ in stream:
                        pass
                if job.attempts >= MAX_ATTEMPTS:
                    await self._end(tracked, Ending(EndReason.ERROR, "its batch kept failing"))
                    continue
                self._fair.push_front(job.owner_id, job.id)
                self._wake.set()
                self._reordered.set()
                await retrying(self._store.save, job, state=JobState.QUEUED, started_at=None)
            except Exception:
                log.exception("job %s could not be put back; the next start picks it up", job.id)

    async def _failed(self, tracked: Tracked, attempt: int, event: Failed) -> None:
        job, actor = tracked.job, tracked.cancelled_by
        if event.kind == "lost" and actor is None and job.attempts < MAX_ATTEMPTS:
            await self._requeue(tracked, attempt, event)
            return
        if event.kind == "cancelled" and actor is None and self._closing.is_set():
            # Stopped by the shutdown, not by anyone: it runs again after the restart.
            await retrying(self._store.save, job, state=JobState.QUEUED, started_at=None,
                           attempts=max(0, job.attempts - 1))
            await self._notify(self.observer.paused, job)
            self._jobs.pop(job.id, None)
            return
        if event.kind == "cancelled" or (event.kind == "lost" and actor is not None):
            ending = _cancelled(job, actor)
        elif event.kind == "lost":
            ending = Ending(EndReason.LOST, event.reason)
        elif event.kind in ("crashed", "stalled"):
            await self._count_crash(tracked)
            reason = EndReason.STALLED if event.kind == "stalled" else EndReason.CRASHED
            ending = Ending(reason, event.reason)
        elif event.kind == "invalid":
            ending = Ending(EndReason.INVALID, event.reason)
        else:
            ending = Ending(EndReason.FAILED, event.reason)
        await self._end(tracked, ending)

    async def _requeue(self, tracked: Tracked, attempt: int, event: Failed) -> None:
        """A job the engine lost runs again, first of its user's jobs and its user first in
        turn (it had its turn, but not its run). The row is the fence: only the attempt that
        is still running goes back, so a stale "lost" cannot run a job twice."""
        job = tracked.job
        if not await retrying(self._store.requeue, job.id, attempt):
            log.warning("job %s: attempt %d was lost, but its row has moved on", job.id, attempt)
            return
        job.state, job.started_at = JobState.QUEUED, None
        log.warning("job %s: the engine lost attempt %d (%s); it runs again", job.id, attempt,
                    event.reason)
        self._fair.push_front(job.owner_id, job.id)
        self._wake.set()
        self._reordered.set()
        tracked.position_shown = self._fair.position(job.id)
        await self._notify(self.observer.requeued, job, tracked.position_shown)

    async def _count_crash(self, tracked: Tracked) -> None:
        """Never raises: a crash that cannot be counted must still end its job, not rerun it."""
        try:
            crashes = await retrying(self._store.record_crash, tracked.digest, tracked.job.id,
                                     self._clock())
        except Exception:
            log.exception("job %s: could not count its crash", tracked.job.id)
            return
        self._quarantine.counted(tracked.digest, crashes)
        log.warning("job %s was in a batch that crashed or stalled the engine worker; its "
                    "request has now done so %d time(s), refused from %d", tracked.job.id,
                    crashes, self._quarantine.limit)

    def _start_delivery(self, tracked: Tracked) -> None:
        task = asyncio.create_task(self._deliver(tracked), name=f"deliver-{tracked.job.id}")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, tracked: Tracked) -> None:
        """Post the result once, then charge it. Each step is recorded as soon as it is done,
        so a process killed anywhere in between neither posts twice nor charges twice. Once
        posted, the database steps persist through an outage (``persisting``): given up, the
        job would wait for a restart to be charged, and be posted again then."""
        job = tracked.job
        try:
            if job.result_message_id is None and not await self._post(tracked):
                return
            charged = await self._capture(job)
            await persisting(self._store.save, job, state=JobState.DELIVERED,
                             finished_at=self._clock(), interaction_token=None,
                             delivered_free=not charged)
            self._jobs.pop(job.id, None)
        except Exception:
            # The row keeps its result: the next start delivers it again and captures then.
            log.exception("job %s: delivered but not recorded", job.id)

    async def _post(self, tracked: Tracked) -> bool:
        """Post the result and record its message in the same step; False if the job ended
        instead. A crash before the record posts again after the restart, which the observer
        makes land on the same message."""
        job = tracked.job
        try:
            message_id = await self.observer.deliver(job)
        except DeliveryError as error:
            await self._end(tracked, Ending(EndReason.UNDELIVERABLE, str(error)))
            return False
        except asyncio.CancelledError:
            raise  # shutdown: the row keeps its result and is delivered after the restart
        except Exception:
            log.exception("job %s: delivery failed", job.id)
            await self._end(tracked, Ending(EndReason.DELIVERY_FAILED))
            return False
        await persisting(self._store.save, job, message_id=message_id,
                         result_message_id=message_id)
        return True

    async def _capture(self, job: Job) -> bool:
        """Charge a delivered job; False (logged as an error, and counted) if its hold could no
        longer be captured: it expired, or something released it. A free job has nothing to
        capture, which is no fault: True."""
        if job.hold_id is None:
            return True
        if await persisting(self._ledger.capture, job.hold_id):
            return True
        status = await persisting(self._ledger.hold_status, job.hold_id)
        if status == "captured":
            return True  # an earlier try of this capture went through before its error
        self.uncharged_deliveries += 1
        log.error("job %s was delivered but its hold %s is %s, so it was delivered free "
                  "(%d such deliveries since start)", job.id, job.hold_id, status,
                  self.uncharged_deliveries)
        return False

    async def _end(self, tracked: Tracked, ending: Ending) -> None:
        """Every ending other than delivery: credits back first, then tell the user.

        Once the hold is released the ending must be written, or the job would run again and
        end for the wrong reason ("hold expired"): both persist through a database outage.
        """
        job = tracked.job
        if job.hold_id is not None:
            await persisting(self._ledger.release, job.hold_id)
        await persisting(self._store.save, job, state=ending.state, end_reason=ending.reason,
                         error=ending.detail, finished_at=self._clock())
        await self._notify(self.observer.ended, job, ending)
        self._jobs.pop(job.id, None)
        await retrying(self._store.save, job, interaction_token=None)

    # -- helpers ----------------------------------------------------------------------------------

    def _push(self, tracked: Tracked) -> None:
        self._jobs[tracked.job.id] = tracked
        self._fair.push(tracked.job.owner_id, tracked.job.id)
        self._wake.set()

    async def _announce_positions(self) -> None:
        """Tell waiting users when they move up, at most one round per POSITION_INTERVAL.

        A separate task, so slow message edits never hold up the dispatcher.
        """
        while True:
            await self._reordered.wait()
            self._reordered.clear()
            for position, job_id in enumerate(self._fair.order(), start=1):
                tracked = self._jobs.get(job_id)
                if (tracked is None or tracked.job.message_id is None
                        or tracked.position_shown == position):
                    continue
                tracked.position_shown = position
                await self._notify(self.observer.moved, tracked.job, position)
            await asyncio.sleep(POSITION_INTERVAL)

    async def _notify(self, hook: Callable[..., Awaitable[Any]], job: Job, *args: Any) -> None:
        try:
            await hook(job, *args)
        except Exception:
            log.exception("job %s: could not update its message (%s)", job.id, hook.__name__)

    async def prune(self, older_than: datetime) -> list[str]:
        """Delete finished job rows created before ``older_than``; returns their ids."""
        return await self._store.prune(older_than)


def _result(event: Done) -> dict[str, Any]:
    return {
        "images": [{"path": str(image.path), "seed": image.seed, "width": image.width,
                    "height": image.height} for image in event.images],
        "grid": str(event.grid) if event.grid is not None else None,
        "seconds": event.seconds,
        "metadata": event.metadata,
    }


def _cancelled(job: Job, actor_id: int | None) -> Ending:
    if actor_id is None or actor_id == job.owner_id:
        return Ending(EndReason.CANCELLED)
    return Ending(EndReason.CANCELLED_BY_ADMIN, actor_id=actor_id)
