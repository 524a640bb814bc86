"""The bot side of the engine: an asyncio client for the worker process.

The event loop only ever touches pipes: a reader thread per worker blocks on the event pipe and
hands each message to the loop with ``call_soon_threadsafe``, so GPU work never stalls Discord
heartbeats. If the worker dies, every job it held ends ``Failed(kind="crashed")`` and a fresh
worker is started; jobs submitted meanwhile wait for it.

A watchdog catches the worker that hangs instead of dying (a CUDA or driver hang, a deadlock, an
operation that never returns): while the worker holds jobs, every message from it restarts a
timer of ``job_stall_seconds``, or of ``model_load_seconds`` while it starts or loads a model.
When the timer runs out the worker is killed, every job it held ends ``Failed(kind="stalled")``,
and a fresh worker takes the next jobs. A healthy worker reports every step, so only a silent
one is killed, and jobs queued inside it behind a long batch keep it alive through its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from engine.errors import EngineStartError, RequestError
from engine.events import Done, EngineEvent, Failed, Queued, until_final
from engine.request import GenerationRequest, validate_request
from engine.settings import EngineSettings
from engine.worker import (
    Cancel,
    Loaded,
    Loading,
    Ready,
    Shutdown,
    StartupFailed,
    Submit,
    WorkerMessage,
    worker_main,
)

log = logging.getLogger("engine.client")

#: Seconds to wait for a worker to finish its current step and exit on close.
SHUTDOWN_TIMEOUT = 30.0
#: Longest pause between restarts of a worker that keeps dying before it is ready.
MAX_RESTART_DELAY = 30.0


@dataclass
class _Job:
    request: GenerationRequest
    events: asyncio.Queue[EngineEvent] = field(default_factory=asyncio.Queue)


@dataclass
class _Worker:
    process: Any  # multiprocessing's SpawnProcess
    commands: Connection
    events: Connection
    ready: asyncio.Future[frozenset[str]]
    #: Set once its reader thread has seen it exit.
    exited: asyncio.Future[None]
    #: Loop time when its silence started: its last message, or the job that ended its idling.
    heard: float
    #: Jobs sent to this worker; they share its fate.
    jobs: set[str] = field(default_factory=set)
    #: The model it is loading, from ``Loading`` to ``Loaded``.
    loading: str | None = None
    watchdog: asyncio.TimerHandle | None = None
    #: Killed by the watchdog: its jobs have ended, and what it still sends is ignored.
    stalled: bool = False


def _engine_settings(settings: EngineSettings) -> EngineSettings:
    """Only the engine's fields cross into the worker (no bot secrets, no bot imports there)."""
    if type(settings) is EngineSettings:
        return settings
    return EngineSettings.model_construct(
        **{name: getattr(settings, name) for name in EngineSettings.model_fields})


def _check_job_id(job_id: str) -> None:
    # The job id names the output folder, so it must be one plain path component.
    if (not job_id or job_id in {".", ".."} or any(c in job_id for c in "/\\\0")
            or len(job_id) > 200):
        raise RequestError("job_id", "job id must be a plain folder name")


class EngineClient:
    """Submits jobs to the worker process and restarts it when it crashes or stalls.

    ``stall_kills`` and ``crashes`` count the workers killed by the watchdog and those that died
    on their own, for metrics.
    """

    def __init__(self, settings: EngineSettings, operation_modules: Sequence[str] = (), *,
                 any_model: bool = False) -> None:
        """``any_model``: the CLI's client, which runs any model (see ``validate_request``)."""
        self._settings = settings
        self._any_model = any_model
        self._worker_settings = _engine_settings(settings)
        self._operation_modules = tuple(operation_modules)
        self._jobs: dict[str, _Job] = {}
        self._worker: _Worker | None = None
        self._backlog: list[GenerationRequest] = []  # submitted while no worker is running
        #: Requests submitted inside ``together()``, sent as one message when it ends.
        self._together: list[GenerationRequest] | None = None
        self._operations: frozenset[str] = frozenset()
        self._restart: asyncio.Task[None] | None = None
        self._restart_delay = 0.0
        self._closing = False
        self._context = multiprocessing.get_context("spawn")
        self.stall_kills = 0
        self.crashes = 0

    @property
    def settings(self) -> EngineSettings:
        return self._settings

    @property
    def operations(self) -> frozenset[str]:
        """Operation names registered in the worker (known once started)."""
        return self._operations

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet ended (queued or running)."""
        return len(self._jobs)

    @property
    def worker_pid(self) -> int | None:
        return self._worker.process.pid if self._worker else None

    async def __aenter__(self) -> EngineClient:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the worker and wait until it has imported its modules and is ready."""
        self._closing = False
        worker = await self._spawn()
        try:
            self._operations = await worker.ready
        except EngineStartError:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the worker (running jobs stop at their next step) and end every open job."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        worker, self._worker = self._worker, None
        if worker is not None:
            with contextlib.suppress(OSError):
                worker.commands.send(Shutdown())
            worker.commands.close()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, worker.process.join, SHUTDOWN_TIMEOUT)
            if worker.process.is_alive():
                worker.process.kill()
                await loop.run_in_executor(None, worker.process.join)
        self._backlog.clear()
        for job_id in list(self._jobs):
            self._end(Failed(job_id, "the engine was shut down", "error"))

    def submit(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        """Validate and queue ``request``; the stream ends with exactly one Done or Failed.

        Raises RequestError right here, before anything is queued. Submitting several requests
        before reading their streams lets compatible ones share a batch.
        """
        if self._closing or (self._worker is None and self._restart is None):
            raise RuntimeError("the engine client is not started")
        resolved = validate_request(request, self._settings, operations=self._operations,
                                    any_model=self._any_model)
        _check_job_id(resolved.job_id)
        if resolved.job_id in self._jobs:
            raise RequestError("job_id", f"job {resolved.job_id} is already running")
        job = _Job(resolved)
        job.events.put_nowait(Queued(resolved.job_id, len(self._jobs)))
        self._jobs[resolved.job_id] = job
        if self._together is not None:
            self._together.append(resolved)
        else:
            self._send([resolved])
        return until_final(job.events)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Send what is submitted inside as one message, so that the worker sees it all at once
        and batches what is compatible; submitted one by one, the worker may start the first
        request before the others arrive."""
        self._together = []
        try:
            yield
        finally:
            requests, self._together = self._together, None
            if requests:
                self._send(requests)

    async def cancel(self, job_id: str) -> bool:
        """Stop a job between steps (it is not decoded); False if it is not running or queued."""
        if job_id not in self._jobs:
            return False
        waiting = [request for request in self._backlog if request.job_id == job_id]
        if waiting:
            self._backlog.remove(waiting[0])
            self._end(Failed(job_id, "cancelled before it started", "cancelled"))
        elif self._worker is not None:
            with contextlib.suppress(OSError):
                self._worker.commands.send(Cancel(job_id))
        return True

    async def generate(self, request: GenerationRequest) -> Done | Failed:
        """Submit and wait for the end, for callers that do not show progress."""
        final: Done | Failed | None = None
        async for event in self.submit(request):
            if isinstance(event, Done | Failed):
                final = event
        assert final is not None
        return final

    def _send(self, requests: list[GenerationRequest]) -> None:
        worker = self._worker
        if worker is None:
            self._backlog.extend(requests)
            return
        if self._limit(worker) is None:  # it was idle: its silence so far was no stall
            worker.heard = asyncio.get_running_loop().time()
        worker.jobs.update(request.job_id for request in requests)
        self._arm(worker)
        # If the worker has just died the pipe is broken; its reader thread reports the crash
        # and these jobs fail with the others it held.
        with contextlib.suppress(OSError):
            worker.commands.send(Submit(tuple(requests)))

    def _end(self, event: Done | Failed) -> None:
        job = self._jobs.pop(event.job_id, None)
        if job is not None:
            job.events.put_nowait(event)

    async def _spawn(self) -> _Worker:
        loop = asyncio.get_running_loop()
        command_reader, command_writer = self._context.Pipe(duplex=False)
        event_reader, event_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main, name="imaginebot-engine", daemon=True,
            args=(self._worker_settings, self._operation_modules, command_reader, event_writer,
                  logging.getLogger().getEffectiveLevel()))
        await loop.run_in_executor(None, process.start)
        # Without closing our copies of the worker's ends, its death would never read as EOF.
        command_reader.close()
        event_writer.close()
        worker = _Worker(process, command_writer, event_reader, loop.create_future(),
                         loop.create_future(), loop.time())
        self._worker = worker
        self._arm(worker)
        threading.Thread(target=self._read_events, args=(loop, worker), name="engine-events",
                         daemon=True).start()
        backlog, self._backlog = self._backlog, []
        if backlog:
            self._send(backlog)
        return worker

    def _read_events(self, loop: asyncio.AbstractEventLoop, worker: _Worker) -> None:
        """Reader thread: blocking reads off the loop, every message handed to the loop."""
        while True:
            try:
                message = worker.events.recv()
            except (EOFError, OSError):
                break
            try:
                loop.call_soon_threadsafe(self._on_message, worker, message)
            except RuntimeError:  # the loop is closed; nobody is listening any more
                return
        worker.process.join(SHUTDOWN_TIMEOUT)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_exit, worker, worker.process.exitcode)

    def _on_message(self, worker: _Worker, message: WorkerMessage) -> None:
        if worker.stalled:
            return
        worker.heard = asyncio.get_running_loop().time()
        if isinstance(message, Ready):
            self._restart_delay = 0.0
            if not worker.ready.done():
                worker.ready.set_result(message.operations)
        elif isinstance(message, StartupFailed):
            if not worker.ready.done():
                worker.ready.set_exception(EngineStartError(message.reason))
        elif isinstance(message, Loading):
            worker.loading = message.model
        elif isinstance(message, Loaded):
            worker.loading = None
        elif isinstance(message, Done | Failed):
            worker.jobs.discard(message.job_id)
            self._end(message)
        elif (job := self._jobs.get(message.job_id)) is not None:
            job.events.put_nowait(message)
        self._arm(worker)

    def _limit(self, worker: _Worker) -> tuple[float, str] | None:
        """Seconds of silence allowed now and what the worker is doing; None while it idles."""
        if not worker.ready.done():
            return self._settings.model_load_seconds, "starting"
        if not worker.jobs:
            return None
        if worker.loading is not None:
            return self._settings.model_load_seconds, f"loading {worker.loading}"
        return self._settings.job_stall_seconds, "running"

    def _arm(self, worker: _Worker) -> None:
        """Point the worker's watchdog at the end of its allowed silence (none while idle)."""
        if worker.watchdog is not None:
            worker.watchdog.cancel()
            worker.watchdog = None
        limit = self._limit(worker)
        if limit is not None:
            worker.watchdog = asyncio.get_running_loop().call_at(
                worker.heard + limit[0], self._on_stall, worker)

    def _on_stall(self, worker: _Worker) -> None:
        worker.watchdog = None
        limit = self._limit(worker)
        if self._worker is not worker or limit is None:  # closed or replaced meanwhile
            return
        seconds, doing = limit
        self.stall_kills += 1
        log.error("engine worker %s sent nothing for %g s while %s (jobs: %s); killing it",
                  worker.process.pid, seconds, doing, ", ".join(sorted(worker.jobs)) or "none")
        worker.stalled = True
        worker.process.kill()  # SIGKILL: it also ends a stopped or deadlocked process
        if not worker.ready.done():
            worker.ready.set_exception(
                EngineStartError(f"the engine worker did not start within {seconds:g} s"))
        for job_id in worker.jobs:
            self._end(Failed(job_id, f"the image generator stopped responding for {seconds:g} s",
                             "stalled"))
        worker.jobs.clear()
        self._replace(worker)

    def _on_exit(self, worker: _Worker, exitcode: int | None) -> None:
        worker.events.close()
        worker.exited.set_result(None)
        if not worker.ready.done():
            worker.ready.set_exception(
                EngineStartError(f"the engine worker exited during start (exit code {exitcode})"))
        for job_id in worker.jobs:
            self._end(Failed(job_id, f"worker crashed (exit code {exitcode})", "crashed"))
        worker.jobs.clear()
        if self._worker is not worker or self._closing:
            return
        self.crashes += 1
        log.error("engine worker died (exit code %s); restarting it", exitcode)
        self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        """Start a fresh worker once ``worker`` is gone; jobs submitted meanwhile wait for it."""
        self._worker = None
        self._restart = asyncio.get_running_loop().create_task(self._restart_worker(worker))

    async def _restart_worker(self, old: _Worker) -> None:
        # A killed worker frees its GPU memory only once it has exited. One stuck in the driver
        # may never exit; the fresh worker is started anyway after a while.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await asyncio.shield(old.exited)
        await asyncio.sleep(self._restart_delay)
        self._restart_delay = min(MAX_RESTART_DELAY, max(1.0, self._restart_delay * 2))
        worker = await self._spawn()
        self._restart = None
        with contextlib.suppress(EngineStartError):
            self._operations = await worker.ready
