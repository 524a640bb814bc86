"""``RedisEngine``: the bot's side of the remote engine (engine.dispatch's ``Engine``).

Workers pull work: a free worker offers a slot on the ready stream, ``acquire_slot`` hands the
oldest idle one to the queue, and ``submit`` puts the batch into that worker's own stream, whose
pending entry is then the batch's lease. Three tasks run beside the queue:

- the offer reader keeps at most one idle slot per worker, and drops offers of a worker that
  is dead, already holds a batch, or whose slot the queue is filling right now;
- the event reader follows every in-flight job's event stream (one XREAD for all of them),
  ignores events of other attempts, and for a Done copies the result PNGs from the result store
  into ``output_dir/<job_id>/``;
- the reaper, every heartbeat, claims (XAUTOCLAIM) batches whose lease expired and drains the
  streams of dead workers, and ends their jobs ``Failed("lost")`` (``"cancelled"`` if a cancel
  was asked for); it also refreshes the remembered catalogue and notices Redis coming back,
  then recreates the consumer groups and loses every in-flight job whose batch Redis forgot.

While Redis is unreachable, dispatch pauses (``acquire_slot`` waits) and nothing is lost: the
jobs stay on their workers, and what Redis kept is picked up again when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError

from engine.dispatch import Catalogue, Dispatch, ModelEntry, Slot
from engine.errors import RequestError
from engine.events import Done, EngineEvent, Failed, ImageResult, Progress, Queued, until_final
from engine.families import FAMILIES, UNKNOWN_MODEL, ModelInfo, display_name, resolve_model
from engine.remote.connection import (
    GROUP_GONE,
    UNREACHABLE,
    Fields,
    add,
    autoclaim,
    cancel_and_wait,
    ensure_group,
    entry_exists,
    last_entries,
    read,
    read_group,
    redis_client,
    text,
)
from engine.remote.inputs import upload_inputs
from engine.remote.protocol import (
    JOBS_GROUP,
    KEEP_SECONDS,
    READY_GROUP,
    REAPER,
    BatchJob,
    Keys,
    Offer,
    ProtocolError,
    RemoteDone,
    batch_json,
    model_entry,
    parse_batch,
    parse_event,
)
from engine.remote.results import ResultStore, result_store
from engine.request import GenerationRequest, validate_request
from engine.settings import EngineSettings

log = logging.getLogger("engine.remote")

#: Longest wait of one blocking read (a submit ends the event reader's wait at once).
BLOCK_MS = 1000
LOST = "the worker running it stopped answering; it will run again"


def model_info_of(entry: ModelEntry) -> ModelInfo:
    """What validation needs, from what a worker said of a model the bot has no files of."""
    family = FAMILIES.get(entry.family)
    if family is None:
        raise RequestError("model", f"model {entry.name} is of no supported family")
    return ModelInfo(ref=entry.name, family=family, width=entry.width, height=entry.height,
                     steps=entry.steps, cfg=entry.cfg, sampler=entry.sampler,
                     name=str(entry.extra.get("display", display_name(entry.name))))


@dataclass(eq=False)
class _Batch:
    worker: str
    #: The stream entry (the lease), once the batch is in the worker's stream.
    entry_id: str | None = None


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    attempt: int
    batch: _Batch
    events: asyncio.Queue[EngineEvent] = field(default_factory=asyncio.Queue)
    #: The last event-stream entry read.
    seen: bytes = b"0-0"
    cancel_requested: bool = False
    #: Its Done arrived and its results are being copied: the reaper leaves it alone.
    finishing: bool = False


class RedisEngine:
    """The engine of ``IMAGINEBOT_ENGINE=redis://...``: workers on many hosts."""

    def __init__(self, settings: EngineSettings, url: str) -> None:
        self._settings = settings
        self._keys = Keys(settings.redis_prefix)
        self._redis = redis_client(url, settings)
        self._store: ResultStore = result_store(settings.result_store, self._redis, self._keys)
        self._idle: dict[str, Slot] = {}
        self._out: dict[str, Slot] = {}
        self._jobs: dict[str, _Job] = {}
        self._models: dict[str, ModelEntry] = {}
        self._operations: frozenset[str] = frozenset()
        self._online = 0
        self._offered = asyncio.Event()
        self._submitted = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the readers and the reaper; Redis may be down (dispatch waits for it)."""
        try:
            await self._reconnect()
            await self._reap()
        except UNREACHABLE as error:
            self._unreachable(error)
        for loop in (self._read_offers, self._read_events, self._run_reaper):
            self._spawn(loop())

    async def close(self) -> None:
        """Stop; jobs still on workers end ``lost``, so the queue runs them again later."""
        await cancel_and_wait(self._tasks)
        for job_id in list(self._jobs):
            self._end(Failed(job_id, "the bot stopped while it ran", "lost"))
        await self._redis.aclose()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unreachable(self, error: BaseException) -> None:
        if self._connected.is_set():
            log.warning("Redis is unreachable (%s); dispatch is paused until it answers",
                        error or type(error).__name__)
            self._connected.clear()

    async def _reconnect(self) -> None:
        """Redis answers (again): its groups may be gone, and idle slots may be stale."""
        await ensure_group(self._redis, self._keys.ready, READY_GROUP)
        self._idle.clear()
        if not self._connected.is_set():
            log.info("Redis answers; dispatch resumes")
            self._connected.set()

    # -- Engine ---------------------------------------------------------------------------------

    async def acquire_slot(self) -> Slot:
        while True:
            self._offered.clear()
            await self._connected.wait()
            while self._idle:
                worker = next(iter(self._idle))
                slot = self._idle.pop(worker)
                try:
                    alive = await self._redis.exists(self._keys.heartbeat(worker))
                except UNREACHABLE as error:
                    self._idle.setdefault(worker, slot)
                    self._unreachable(error)
                    break
                if alive:
                    self._out[worker] = slot
                    return slot
            await self._offered.wait()

    def release_slot(self, slot: Slot) -> None:
        if self._out.get(slot.worker) is slot:
            del self._out[slot.worker]
            self._idle.setdefault(slot.worker, slot)
            self._offered.set()

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        """As the local engine validates, for models whose files the bot's host has; else by
        the remembered catalogue of the models workers offered. The validated request names
        its model as bot and workers both list it (not a path on the bot's host)."""
        operations = self._operations or None
        name = request.model or self._settings.model
        local = next((entry for entry in self._settings.allowed_models
                      if name in (entry, resolve_model(entry, self._settings))), None)
        if local is not None:
            try:
                resolved = validate_request(request, self._settings, operations=operations)
            except RequestError as error:
                if error.field != "model" or local not in self._models:
                    raise
            else:
                return resolved.model_copy(update={"model": local})
            name = local
        entry = self._models.get(name)
        if entry is None:
            raise RequestError("model", UNKNOWN_MODEL)
        return validate_request(request.model_copy(update={"model": entry.name}),
                                self._settings, operations=operations,
                                info=model_info_of(entry))

    def submit(self, jobs: Sequence[Dispatch], slot: Slot) -> list[AsyncIterator[EngineEvent]]:
        batch = _Batch(slot.worker)
        streams = []
        for dispatch in jobs:
            job = _Job(dispatch.request, dispatch.attempt, batch)
            job.events.put_nowait(Queued(dispatch.request.job_id, 0))
            self._jobs[dispatch.request.job_id] = job
            streams.append(until_final(job.events))
        self._spawn(self._send(batch, slot, [BatchJob(d.request, d.attempt) for d in jobs]))
        self._submitted.set()
        return streams

    async def cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancel_requested = True
        self._spawn(self._send_cancel(job_id))
        return True

    def catalogue(self) -> Catalogue:
        return Catalogue(models=dict(self._models), operations=self._operations,
                         workers_online=self._online)

    # -- jobs -----------------------------------------------------------------------------------

    def _end(self, event: Done | Failed) -> None:
        job = self._jobs.pop(event.job_id, None)
        if job is not None:
            job.events.put_nowait(event)

    async def _send(self, batch: _Batch, slot: Slot, jobs: list[BatchJob]) -> None:
        """Upload the jobs' input files (``engine.remote.inputs``), then hand the batch over."""
        stream = self._keys.jobs(slot.worker)
        try:
            await ensure_group(self._redis, stream, JOBS_GROUP)
            jobs = [await upload_inputs(self._store, job, self._settings.output_dir)
                    for job in jobs]
            batch.entry_id = text(await add(self._redis, stream, {"m": batch_json(jobs)}))
        except UNREACHABLE as error:
            # Whether it arrived is unknown: if it did, that attempt's result is fenced out.
            self._unreachable(error)
            for job in jobs:
                self._lose(job.request.job_id, job.attempt,
                           "the queue server could not be reached; it will run again")
        finally:
            if self._out.get(slot.worker) is slot:
                del self._out[slot.worker]
        with contextlib.suppress(*UNREACHABLE):
            await add(self._redis, self._keys.wake, {"m": b""}, maxlen=1, approximate=False)

    async def _send_cancel(self, job_id: str) -> None:
        """The durable flag (read by the worker before and during the batch), then the nudge;
        retried while Redis is away, for as long as the job is in flight."""
        while job_id in self._jobs:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(self._keys.cancel(job_id), 1, ex=KEEP_SECONDS)
                    pipe.publish(self._keys.cancels, job_id)
                    await pipe.execute()
                return
            except UNREACHABLE as error:
                self._unreachable(error)
                await self._connected.wait()

    def _lose(self, job_id: str, attempt: int, reason: str = LOST) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.attempt != attempt or job.finishing:
            return
        if job.cancel_requested:
            self._end(Failed(job_id, "cancelled", "cancelled"))
        else:
            self._end(Failed(job_id, reason, "lost"))

    # -- offers ---------------------------------------------------------------------------------

    async def _read_offers(self) -> None:
        while True:
            await self._connected.wait()
            try:
                entries = await read_group(self._redis, READY_GROUP, "bot", self._keys.ready,
                                           count=100, block=BLOCK_MS)
                for _, fields in entries:
                    await self._on_offer(fields.get(b"m", b""))
                if entries:
                    await self._redis.xack(self._keys.ready, READY_GROUP,
                                           *(entry_id for entry_id, _ in entries))
            except ResponseError as error:
                if not str(error).startswith(GROUP_GONE):
                    raise
                await ensure_group(self._redis, self._keys.ready, READY_GROUP)
            except UNREACHABLE as error:
                self._unreachable(error)

    async def _on_offer(self, data: bytes) -> None:
        try:
            offer = Offer.from_json(data)
        except ProtocolError as error:
            log.warning("ignored an offer: %s", error)
            return
        worker = offer.worker
        if worker in self._out:
            return  # the queue is filling this worker's slot right now
        if not await self._redis.exists(self._keys.heartbeat(worker)):
            return
        if await self._busy(worker):
            return  # an offer sent before the worker saw the batch it was given
        self._idle[worker] = offer.slot()
        self._offered.set()

    async def _busy(self, worker: str) -> bool:
        """Whether the worker's stream holds a batch it has not finished. Asked of Redis, not
        of memory: the worker ends its lease before it offers again, possibly before the bot
        has read its results, and a restarted bot remembers nothing."""
        stream = self._keys.jobs(worker)
        try:
            groups = await self._redis.xinfo_groups(stream)
        except ResponseError:  # no stream yet
            return False
        for group in groups:
            if group["name"] in (JOBS_GROUP, JOBS_GROUP.encode()):
                if group["pending"]:
                    return True
                later = "(" + text(group["last-delivered-id"])
                return bool(await self._redis.xrange(stream, min=later, count=1))
        return bool(await self._redis.xlen(stream))

    # -- events ---------------------------------------------------------------------------------

    async def _read_events(self) -> None:
        while True:
            await self._connected.wait()
            if not self._jobs:
                self._submitted.clear()
                await self._submitted.wait()
                continue
            streams: dict[str, bytes | str] = {self._keys.wake: "$"}
            streams |= {self._keys.events(job_id): job.seen for job_id, job in self._jobs.items()}
            try:
                found = await read(self._redis, streams, count=100, block=BLOCK_MS)
            except UNREACHABLE as error:
                self._unreachable(error)
                continue
            for stream, entries in found:
                if stream == self._keys.wake:
                    continue
                job_id = stream.removeprefix(self._keys.events(""))
                for entry_id, fields in entries:
                    job = self._jobs.get(job_id)
                    if job is None:
                        break
                    job.seen = entry_id
                    self._on_event(job, fields)

    def _on_event(self, job: _Job, fields: Fields) -> None:
        try:
            attempt, event = parse_event(fields)
        except ProtocolError as error:
            log.warning("ignored an event of job %s: %s", job.request.job_id, error)
            return
        if attempt != job.attempt or event.job_id != job.request.job_id or job.finishing:
            return
        if isinstance(event, Progress):
            job.events.put_nowait(event)
        elif isinstance(event, Failed):
            self._end(event)
        else:
            job.finishing = True
            self._spawn(self._collect(job, event))

    async def _collect(self, job: _Job, done: RemoteDone) -> None:
        """Copy the results into the bot's output folder, then end the job with them."""
        refs = [image.ref for image in done.images] + ([done.grid] if done.grid else [])
        if done.store != self._store.kind:
            self._end(Failed(done.job_id, f"the worker left its results in a {done.store} "
                             f"store, and this bot reads a {self._store.kind} store", "error"))
            return
        while True:
            try:
                files = [await self._store.get(ref) for ref in refs]
                break
            except UNREACHABLE as error:
                self._unreachable(error)
                await self._connected.wait()
        if any(data is None for data in files):
            self._end(Failed(done.job_id, "its results expired before the bot fetched them; "
                             "it will run again", "lost"))
            return
        folder = (self._settings.output_dir / done.job_id).resolve()
        try:
            paths = await asyncio.to_thread(_write_files, folder, refs, files)
        except OSError as error:
            self._end(Failed(done.job_id, f"could not save images: {error}", "error"))
            return
        images = [ImageResult(paths[index], image.seed, image.width, image.height)
                  for index, image in enumerate(done.images)]
        grid = paths[-1] if done.grid else None
        # Left to expire if Redis is away: the job's results are in the bot's hands already.
        with contextlib.suppress(*UNREACHABLE):
            async with asyncio.timeout(self._settings.heartbeat_seconds):
                await self._store.delete(refs)
        self._end(Done(done.job_id, images, grid, done.seconds, done.metadata))

    # -- reaper ---------------------------------------------------------------------------------

    async def _run_reaper(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_seconds)
            try:
                if not self._connected.is_set():
                    await self._reconnect()
                await self._reap()
            except UNREACHABLE as error:
                self._unreachable(error)
            except Exception:
                log.exception("the remote engine's reaper failed; it runs again next beat")

    async def _reap(self) -> None:
        """One pass: the catalogue, expired leases, dead workers, batches Redis forgot."""
        registrations = await self._redis.hgetall(self._keys.workers)
        models = await self._redis.hgetall(self._keys.models)
        operations = await self._redis.smembers(self._keys.operations)
        # Merged, never replaced: a Redis that came back empty must not make the bot refuse
        # the models it knew until a worker registers again.
        for data in models.values():
            with contextlib.suppress(ProtocolError):
                entry = model_entry(data)
                self._models[entry.name] = entry
        if operations:
            self._operations |= {"txt2img", *map(text, operations)}
        workers = sorted({text(name) for name in registrations}
                         | {job.batch.worker for job in self._jobs.values()})
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.exists(self._keys.heartbeat(worker))
            alive = [bool(found) for found in await pipe.execute()]
        self._online = sum(alive)
        for worker, living in zip(workers, alive, strict=True):
            await self._reap_worker(worker, living)
        await self._check_batches()

    async def _reap_worker(self, worker: str, alive: bool) -> None:
        """Claim the worker's expired leases (all of them if it is dead) and the batches a dead
        worker never read; end their jobs and delete the entries."""
        stream = self._keys.jobs(worker)
        idle_ms = int(self._settings.lease_seconds * 1000) if alive else 0
        entries = []
        try:
            entries += await autoclaim(self._redis, stream, JOBS_GROUP, REAPER, idle_ms)
            if not alive:
                entries += await read_group(self._redis, JOBS_GROUP, REAPER, stream, count=1000)
        except ResponseError:  # no stream, or no group: nothing was sent there
            pass
        if not alive:
            await self._redis.hdel(self._keys.workers, worker)
        for entry_id, fields in entries:
            try:
                jobs = parse_batch(fields.get(b"m", b""))
            except ProtocolError as error:
                log.warning("dropped a bad batch of worker %s: %s", worker, error)
                jobs = []
            # The entry goes first: once a job is reported lost, nothing of it is left to run.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, JOBS_GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
            for job in jobs:
                if not await self._final_waiting(job.request.job_id, job.attempt):
                    self._lose(job.request.job_id, job.attempt)
            log.warning("worker %s lost its batch %s (%s)", worker, text(entry_id),
                        "lease expired" if alive else "worker gone")

    async def _check_batches(self) -> None:
        """A batch whose entry is gone and whose jobs did not end was forgotten by Redis
        (FLUSHALL, or a restart without its append-only file): its jobs are lost."""
        batches = {id(job.batch): job.batch for job in self._jobs.values()
                   if job.batch.entry_id is not None}
        for batch in batches.values():
            assert batch.entry_id is not None
            stream = self._keys.jobs(batch.worker)
            if await entry_exists(self._redis, stream, batch.entry_id):
                continue
            for job in [job for job in self._jobs.values() if job.batch is batch]:
                if not await self._final_waiting(job.request.job_id, job.attempt):
                    self._lose(job.request.job_id, job.attempt)

    async def _final_waiting(self, job_id: str, attempt: int) -> bool:
        """Whether the job's Done or Failed of this attempt is in its stream, not yet read (the
        worker published it, then its lease ended): the event reader will deliver it."""
        for _, fields in await last_entries(self._redis, self._keys.events(job_id), 4):
            with contextlib.suppress(ProtocolError):
                seen, event = parse_event(fields)
                if seen == attempt and not isinstance(event, Progress):
                    return True
        return False


def _write_files(folder: Path, refs: list[str], files: Sequence[bytes | None]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ref, data in zip(refs, files, strict=True):
        assert data is not None
        path = folder / ref.rsplit("/", 1)[-1]
        path.write_bytes(data)
        paths.append(path)
    return paths
