"""``imaginebot worker``: an asyncio agent that runs batches from Redis on today's EngineClient.

The agent registers the models and operations of its host, refreshes a heartbeat key, offers a
slot on the ready stream whenever it is free (and again every heartbeat while idle, since a
restarted bot forgets idle slots), and reads batches from its own stream. Each batch runs on an
unchanged ``EngineClient``, whose GPU process keeps this loop free, so heartbeats and lease
renewals never stall during GPU work, and a GPU-process crash ends the batch's jobs
``Failed("crashed")`` while the agent stays registered and the client starts a fresh process.

A job's input files (an image prompt, an image to upscale) are fetched from the result store
into the engine's output folder first, and removed after the batch (``engine.remote.inputs``).
Progress goes to each job's event stream (at most one preview per 1.5 s per job); result PNGs go
to the result store and the Done names them. A batch whose lease cannot be renewed (the reaper
claimed it, or Redis stayed away past the lease) is cancelled, and nothing of it is uploaded or
published: another worker runs it again. SIGTERM drains: the batch in hand finishes, no new
slot is offered, and the worker deregisters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import math
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from redis.exceptions import ResponseError

from engine.client import EngineClient
from engine.dispatch import model_entries
from engine.errors import RequestError
from engine.events import Done, EngineEvent, Failed, Progress
from engine.remote.connection import (
    GROUP_GONE,
    UNREACHABLE,
    add,
    cancel_and_wait,
    ensure_group,
    read_group,
    redis_client,
)
from engine.remote.inputs import InputError, fetch_inputs
from engine.remote.protocol import (
    EVENTS_MAXLEN,
    FINISH,
    JOBS_GROUP,
    KEEP_SECONDS,
    READY_MAXLEN,
    RELEASE,
    RENEW,
    VERSION,
    BatchJob,
    Keys,
    Offer,
    ProtocolError,
    Registration,
    RemoteDone,
    RemoteEvent,
    RemoteImage,
    check_worker_name,
    event_fields,
    model_entry_json,
    parse_batch,
    result_ref,
)
from engine.remote.results import result_store
from engine.request import GenerationRequest
from engine.settings import EngineSettings

log = logging.getLogger("engine.remote.worker")

#: At most one preview per job this often: previews are the bulk of the event traffic.
PREVIEW_SECONDS = 1.5
#: Pause between tries while Redis is unreachable.
RETRY_SECONDS = 0.5


@dataclass(eq=False)
class _Batch:
    entry_id: str
    #: job id -> attempt
    jobs: dict[str, int]
    #: Loop time of the last successful lease renewal (or of the batch's arrival).
    renewed: float
    #: The lease is no longer this worker's: cancel, upload and publish nothing.
    fenced: bool = False


class Worker:
    """One ``imaginebot worker`` process: one GPU, one EngineClient, one stream of batches."""

    def __init__(self, settings: EngineSettings, url: str, name: str,
                 operation_modules: Sequence[str] = ()) -> None:
        self.name = check_worker_name(name)
        self._settings = settings
        self._keys = Keys(settings.redis_prefix)
        self._stream = self._keys.jobs(name)
        self._redis = redis_client(url, settings)
        self._store = result_store(settings.result_store, self._redis, self._keys)
        self._scratch = Path(tempfile.mkdtemp(prefix="imaginebot-worker-"))
        self._client = EngineClient(settings.model_copy(update={"output_dir": self._scratch}),
                                    operation_modules)
        self._renew = self._redis.register_script(RENEW)
        self._finish_script = self._redis.register_script(FINISH)
        self._release_script = self._redis.register_script(RELEASE)
        self._registration: Registration | None = None
        self._batch: _Batch | None = None
        self._draining = asyncio.Event()
        self._offers = 0
        self._loaded: list[str] = []

    def drain(self) -> None:
        """Finish the batch in hand, offer no new slot, then deregister and return."""
        if not self._draining.is_set():
            log.info("worker %s draining", self.name)
            self._draining.set()

    async def run(self) -> None:
        """Serve until drained. Starts the GPU process first: a bad setting fails here."""
        await self._client.start()
        try:
            self._registration = self._register_info()
            log.info("worker %s offers models %s and operations %s", self.name,
                     ", ".join(self._registration.models) or "none",
                     ", ".join(self._registration.operations))
            beats = asyncio.create_task(self._beat_forever())
            cancels = asyncio.create_task(self._listen_for_cancels())
            try:
                await self._serve()
            finally:
                await cancel_and_wait((beats, cancels))
                await self._deregister()
        finally:
            await self._client.close()
            await self._redis.aclose()
            shutil.rmtree(self._scratch, ignore_errors=True)

    # -- registration and heartbeat -------------------------------------------------------------

    def _register_info(self) -> Registration:
        models = model_entries(self._settings)
        try:
            version = importlib.metadata.version("imaginebot")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return Registration(self.name, models, sorted(self._client.operations),
                            self._settings.max_batch, self._settings.max_pixels,
                            {"protocol": str(VERSION), "imaginebot": version})

    async def _beat(self) -> None:
        """Registration and heartbeat key (rewritten whole: Redis may have come back empty),
        then the lease renewal and the cancel flags of the batch in hand."""
        registration = self._registration
        assert registration is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.workers, self.name, registration.to_json())
            pipe.set(self._keys.heartbeat(self.name), 1,
                     ex=max(1, math.ceil(self._settings.lease_seconds)))
            if registration.models:
                pipe.hset(self._keys.models, mapping={
                    name: model_entry_json(entry) for name, entry in registration.models.items()})
            if registration.operations:
                pipe.sadd(self._keys.operations, *registration.operations)
            await pipe.execute()
        batch = self._batch
        if batch is None or batch.fenced:
            return
        renewed = await self._renew(keys=[self._stream],
                                    args=[JOBS_GROUP, self.name, batch.entry_id])
        if not renewed:
            await self._fence(batch, "another took over its lease")
            return
        batch.renewed = asyncio.get_running_loop().time()
        await self._cancel_flagged(batch)

    async def _beat_forever(self) -> None:
        beat = self._settings.heartbeat_seconds
        while True:
            try:
                # A slow beat is no failure while the heartbeat key and the lease last; one
                # stuck longer (a cut connection) is given up, and the lease checked below.
                async with asyncio.timeout(self._settings.lease_seconds / 2):
                    await self._beat()
            except UNREACHABLE as error:
                log.warning("worker %s: heartbeat failed: %s", self.name,
                            error or type(error).__name__)
            batch = self._batch
            if (batch is not None and not batch.fenced and asyncio.get_running_loop().time()
                    - batch.renewed > self._settings.lease_seconds):
                await self._fence(batch, "it could not renew its lease in time")
            await asyncio.sleep(beat)

    async def _deregister(self) -> None:
        with contextlib.suppress(*UNREACHABLE):
            async with asyncio.timeout(self._settings.heartbeat_seconds):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hdel(self._keys.workers, self.name)
                    pipe.delete(self._keys.heartbeat(self.name))
                    await pipe.execute()
        log.info("worker %s deregistered", self.name)

    # -- cancel ---------------------------------------------------------------------------------

    async def _fence(self, batch: _Batch, why: str) -> None:
        batch.fenced = True
        log.warning("worker %s stops batch %s: %s", self.name, batch.entry_id, why)
        for job_id in batch.jobs:
            await self._client.cancel(job_id)

    async def _cancel_flagged(self, batch: _Batch) -> None:
        """The durable cancel flags: the nudge may have been missed (a reconnect)."""
        job_ids = list(batch.jobs)
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self._keys.cancel(job_id))
            flags = await pipe.execute()
        for job_id, flag in zip(job_ids, flags, strict=True):
            if flag:
                await self._client.cancel(job_id)

    async def _listen_for_cancels(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._keys.cancels)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        batch = self._batch
                        if message is None or batch is None:
                            continue
                        job_id = message["data"].decode(errors="replace")
                        if job_id in batch.jobs:
                            await self._client.cancel(job_id)
            except UNREACHABLE:
                await asyncio.sleep(RETRY_SECONDS)

    # -- batches --------------------------------------------------------------------------------

    async def _offer(self) -> None:
        registration = self._registration
        assert registration is not None
        self._offers += 1
        offer = Offer(self.name, self._offers, list(registration.models), list(self._loaded),
                      registration.operations, registration.max_batch, registration.max_pixels)
        await add(self._redis, self._keys.ready, {"m": offer.to_json()}, maxlen=READY_MAXLEN)

    async def _serve(self) -> None:
        block = max(1, int(self._settings.heartbeat_seconds * 1000))
        ready = False
        while not self._draining.is_set():
            try:
                if not ready:
                    await self._beat()
                    await ensure_group(self._redis, self._stream, JOBS_GROUP)
                    ready = True
                await self._offer()
                entries = await read_group(self._redis, JOBS_GROUP, self.name, self._stream,
                                           count=1, block=block)
            except ResponseError as error:
                if not str(error).startswith(GROUP_GONE):
                    raise
                ready = False  # Redis forgot the group (FLUSHALL, or back without its AOF)
                continue
            except UNREACHABLE as error:
                log.warning("worker %s: Redis is unreachable: %s", self.name,
                            error or type(error).__name__)
                ready = False
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for entry_id, fields in entries:
                await self._run(entry_id.decode(), fields.get(b"m", b""))

    async def _run(self, entry_id: str, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            jobs = parse_batch(data)
        except ProtocolError as error:
            log.warning("worker %s dropped batch %s: %s", self.name, entry_id, error)
            jobs = []
        batch = _Batch(entry_id, {job.request.job_id: job.attempt for job in jobs}, loop.time())
        self._batch = batch
        placed: list[Path] = []
        try:
            with contextlib.suppress(*UNREACHABLE):
                await self._cancel_flagged(batch)
            runs: list[Awaitable[object]] = []
            ready: list[tuple[BatchJob, GenerationRequest]] = []
            for job in jobs:
                try:
                    ready.append((job, await self._fetch_inputs(batch, job, placed)))
                except InputError as error:
                    runs.append(self._end(batch, job, Failed(job.request.job_id, str(error),
                                                             "invalid")))
            # Submitted together before any stream is read, so that the client batches them.
            with self._client.together():
                for job, request in ready:
                    try:
                        stream = self._client.submit(request)
                    except RequestError as error:
                        runs.append(self._end(batch, job, Failed(job.request.job_id, str(error),
                                                                 "invalid")))
                    else:
                        runs.append(self._forward(batch, job, stream))
            await asyncio.gather(*runs)
            await self._retry(batch, lambda: self._release_script(
                keys=[self._stream], args=[JOBS_GROUP, self.name, entry_id]))
        finally:
            self._batch = None
            await asyncio.to_thread(_remove, placed)
            for model in {job.request.model for job in jobs}:
                self._loaded = [model, *(m for m in self._loaded if m != model)]
            del self._loaded[self._settings.pipeline_cache_size:]

    async def _fetch_inputs(self, batch: _Batch, job: BatchJob,
                            placed: list[Path]) -> GenerationRequest:
        """The job's request, its input files in this worker's output folder (the engine's),
        their refs then deleted from the store: a later attempt uploads its own."""
        request = await fetch_inputs(job, functools.partial(self._get, batch), self._scratch,
                                     placed)
        if job.inputs:
            with contextlib.suppress(*UNREACHABLE):
                await self._store.delete([item.ref for item in job.inputs])
        return request

    async def _get(self, batch: _Batch, ref: str) -> bytes | None:
        """A file from the result store, retried while Redis is unreachable; None once the
        batch is fenced (its job's end is then published by no one)."""
        while not batch.fenced:
            try:
                return await self._store.get(ref)
            except UNREACHABLE:
                await asyncio.sleep(RETRY_SECONDS)
        return None

    async def _forward(self, batch: _Batch, job: BatchJob,
                       stream: AsyncIterator[EngineEvent]) -> None:
        """Pass one job's events on (a cancelled job ends ``Failed("cancelled")``, as locally)."""
        loop = asyncio.get_running_loop()
        shown = -math.inf
        async for event in stream:
            if isinstance(event, Progress) and not batch.fenced:
                preview = event.preview
                if preview is not None and loop.time() - shown < PREVIEW_SECONDS:
                    preview = None
                elif preview is not None:
                    shown = loop.time()
                await self._progress(job.attempt, replace(event, preview=preview))
            elif isinstance(event, Done):
                try:
                    if not batch.fenced:
                        await self._deliver(batch, job, event)
                finally:
                    shutil.rmtree(self._scratch / event.job_id, ignore_errors=True)
            elif isinstance(event, Failed):
                await self._end(batch, job, event)

    async def _progress(self, attempt: int, event: Progress) -> None:
        """Best effort: a lost progress event costs nothing."""
        key = self._keys.events(event.job_id)
        with contextlib.suppress(*UNREACHABLE):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, cast(Any, event_fields(attempt, event)), maxlen=EVENTS_MAXLEN,
                          approximate=False)
                pipe.expire(key, KEEP_SECONDS)
                await pipe.execute()

    async def _deliver(self, batch: _Batch, job: BatchJob, done: Done) -> None:
        """Upload the PNGs, then publish the Done, only while the lease is still this one's."""
        files = [image.path for image in done.images] + ([done.grid] if done.grid else [])
        refs = [result_ref(done.job_id, job.attempt, path.name) for path in files]
        for path, ref in zip(files, refs, strict=True):
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as error:
                with contextlib.suppress(*UNREACHABLE):
                    await self._store.delete(refs)
                await self._end(batch, job, Failed(done.job_id, f"could not read its images: "
                                                   f"{error}", "error"))
                return
            if not await self._retry(batch, functools.partial(self._store.put, ref, data)):
                break
        images = [RemoteImage(ref, image.seed, image.width, image.height)
                  for ref, image in zip(refs, done.images, strict=False)]
        remote = RemoteDone(done.job_id, self._store.kind, images,
                            refs[-1] if done.grid else None, done.seconds, done.metadata)
        if batch.fenced or not await self._end(batch, job, remote):
            with contextlib.suppress(*UNREACHABLE):
                await self._store.delete(refs)

    async def _end(self, batch: _Batch, job: BatchJob, event: RemoteEvent) -> bool:
        """Publish a job's final event through the lease-checking script; False if fenced."""
        message = event_fields(job.attempt, event)["m"]
        published = await self._retry(batch, lambda: self._finish_script(
            keys=[self._stream, self._keys.events(job.request.job_id)],
            args=[JOBS_GROUP, self.name, batch.entry_id, EVENTS_MAXLEN, KEEP_SECONDS, message]))
        if published is False and not batch.fenced:
            await self._fence(batch, "another took over its lease")
        return bool(published) and not batch.fenced

    async def _retry(self, batch: _Batch, call: Callable[[], Awaitable[object]]) -> bool:
        """``call()``'s result, retried while Redis is unreachable; False once the batch is
        fenced (the heartbeat fences it when the lease could not be renewed in time)."""
        while not batch.fenced:
            try:
                result = await call()
            except UNREACHABLE:
                await asyncio.sleep(RETRY_SECONDS)
                continue
            return True if result is None else bool(result)
        return False


def _remove(paths: list[Path]) -> None:
    """The batch's input files, and their folders once empty: the next batch brings its own."""
    for path in paths:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()
