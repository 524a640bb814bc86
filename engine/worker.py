"""The worker process: owns the GPU, runs jobs one batch at a time, streams events back.

Started by :class:`engine.client.EngineClient` with the "spawn" start method, so CUDA is never
initialised in a forked copy of the bot. A reader thread drains the command pipe the whole
time, which is how a cancel reaches a job while the main thread is busy stepping it, and how
requests that arrive during a run queue up to be batched together once the worker is free.

The client's stall watchdog kills a worker that holds jobs and stays silent too long, so the
main thread reports every step, and says when a model load starts and when it is over.

The main thread never waits for a preview's rendering or a result's PNGs: the outbox makes
those events on threads of its own and sends each job's events in the order they were given.
"""

from __future__ import annotations

import importlib
import io
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.batching import batch_key
from engine.errors import JobCancelled, RequestError
from engine.events import Done, EngineEvent, Failed, ImageResult, Progress
from engine.families import model_info
from engine.operations import OperationContext, get_operation, operation_names

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.previews import Preview
    from engine.request import GenerationRequest
    from engine.runner import Runner
    from engine.settings import EngineSettings

log = logging.getLogger("engine.worker")

#: Longest side of a preview; previews are for watching progress, not for keeping.
PREVIEW_SIZE = 256


# Messages from the client to the worker.
@dataclass(frozen=True)
class Submit:
    """Requests submitted together, which the worker sees at once and so can batch (sent one
    by one, the first could start before the others arrive)."""

    requests: tuple[GenerationRequest, ...]


@dataclass(frozen=True)
class Cancel:
    job_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# Messages from the worker to the client besides job events.
@dataclass(frozen=True)
class Ready:
    operations: frozenset[str]


@dataclass(frozen=True)
class StartupFailed:
    reason: str


@dataclass(frozen=True)
class Loading:
    """A model load starts: a silence up to the load limit is no stall until ``Loaded``."""

    model: str


@dataclass(frozen=True)
class Loaded:
    """The load is over: the running batch has made its first step, or has ended."""

    model: str


WorkerMessage = EngineEvent | Ready | StartupFailed | Loading | Loaded


def take_batch(pending: Sequence[GenerationRequest], max_batch: int,
               ) -> tuple[list[GenerationRequest], list[GenerationRequest]]:
    """Split ``pending`` into the next batch and the rest, keeping order.

    The oldest request always runs; later compatible requests join while their images fit in
    ``max_batch``, so nobody waits behind a request that could have shared the run.
    """
    if not pending:
        return [], []
    head, *others = pending
    batch, rest = [head], []
    key, images = batch_key(head), head.count
    for request in others:
        if key is not None and batch_key(request) == key and images + request.count <= max_batch:
            batch.append(request)
            images += request.count
        else:
            rest.append(request)
    return batch, rest


class Outbox:
    """Sends events to the client from every worker thread, each job's in the order given.

    Some events need work first: a preview to render, a job's PNGs to write. :meth:`post` does
    that work on a small thread pool, so the GPU thread goes on at once, and puts the event in
    its job's line; :meth:`send` puts a ready event behind it. An event leaves only after
    those given before it for the same job, so a job's Progress stays in step order, its Done
    leaves once its files exist, and nothing follows its Done or Failed. Other jobs' events,
    and those of no job (Loading, Ready), do not wait.
    """

    def __init__(self, connection: Connection, threads: int = 4) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._lines: dict[str, deque[Future[WorkerMessage]]] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="outbox")
        self._loading: str | None = None  # touched by the main thread only

    def send(self, message: WorkerMessage) -> None:
        """Send now, or after the job's events that are still being made."""
        with self._lock:
            line = self._lines.get(getattr(message, "job_id", ""))
            if line is None:
                self._connection.send(message)
                return
            ready: Future[WorkerMessage] = Future()
            ready.set_result(message)
            line.append(ready)

    def post(self, job_id: str, make: Callable[[], WorkerMessage]) -> None:
        """Make ``job_id``'s next event on the pool and send it in its turn. ``make`` must
        not raise: it turns its own failures into the event to send."""
        with self._lock:
            made = self._pool.submit(make)
            self._lines.setdefault(job_id, deque()).append(made)
        made.add_done_callback(lambda _: self._deliver(job_id))

    def _deliver(self, job_id: str) -> None:
        """Send the job's events that are ready, up to the first still being made."""
        with self._lock:
            line = self._lines.get(job_id)
            try:
                while line and line[0].done():
                    self._connection.send(line.popleft().result())
            except (OSError, ValueError):  # the client is gone: the rest can never be sent
                log.warning("cannot send job %s's events: the client is gone", job_id)
                line = None
            if not line:
                self._lines.pop(job_id, None)

    def close(self) -> None:
        """Wait until every event given has been sent (the worker is about to exit)."""
        self._pool.shutdown(wait=True)

    def loading(self, model: str) -> None:
        """The runner's load hook: ``Loading`` now, ``Loaded`` once :meth:`settled`."""
        self._loading = model
        self.send(Loading(model))

    def settled(self) -> None:
        """The running batch made a step or ended, so any load before it is over.

        A load counts up to the first step rather than to the end of ``from_pretrained``
        because that step is slow too: torch.compile and kernel autotuning run in it.
        """
        if self._loading is not None:
            self.send(Loaded(self._loading))
            self._loading = None


class Inbox:
    """Jobs waiting for the GPU and the cancel marks for running ones, shared by both threads."""

    def __init__(self, max_batch: int) -> None:
        self._max_batch = max_batch
        self._pending: list[GenerationRequest] = []
        self._running: set[str] = set()
        self._cancelled: set[str] = set()
        self._closed = False
        self._changed = threading.Condition()

    def add(self, requests: Sequence[GenerationRequest]) -> None:
        with self._changed:
            self._pending.extend(requests)
            self._changed.notify()

    def cancel(self, job_id: str) -> bool:
        """Mark a running job, or drop a waiting one; True when a waiting job was dropped."""
        with self._changed:
            if job_id in self._running:
                self._cancelled.add(job_id)
                return False
            kept = [request for request in self._pending if request.job_id != job_id]
            dropped = len(kept) != len(self._pending)
            self._pending = kept
            return dropped

    def close(self) -> None:
        """Stop taking work; running jobs stop at their next step."""
        with self._changed:
            self._closed = True
            self._pending.clear()
            self._cancelled |= self._running
            self._changed.notify()

    def take(self) -> list[GenerationRequest] | None:
        """Block until there is work; None once closed."""
        with self._changed:
            while not self._pending and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            batch, self._pending = take_batch(self._pending, self._max_batch)
            self._running = {request.job_id for request in batch}
            return batch

    def is_cancelled(self, job_id: str) -> bool:
        with self._changed:
            return job_id in self._cancelled

    def finish(self) -> None:
        with self._changed:
            self._cancelled -= self._running
            self._running = set()


def read_commands(commands: Connection, inbox: Inbox, outbox: Outbox) -> None:
    """Reader thread: the client's commands, applied as soon as they arrive."""
    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):
            break
        if isinstance(message, Submit):
            inbox.add(message.requests)
        elif isinstance(message, Cancel):
            if inbox.cancel(message.job_id):
                outbox.send(Failed(message.job_id, "cancelled before it started", "cancelled"))
        else:
            break
    inbox.close()


def encode_preview(image: Image) -> bytes:
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    return buffer.getvalue()


def preview_progress(job_id: str, step: int, total: int, preview: Preview) -> Progress:
    """The step's Progress with its preview rendered and encoded (on the outbox's pool). A
    preview that cannot be made is logged and left out: it must not end the job."""
    try:
        data = encode_preview(preview.image())
    except Exception:
        log.exception("job %s: no preview for step %d", job_id, step)
        data = None
    return Progress(job_id, step, total, data)


def failure_text(error: BaseException) -> str:
    """One line for the user; the traceback goes to the worker's log.

    A RequestError is already that line (a model too large for the GPU, speed settings the
    worker refuses). A model that can never fit is refused before loading (engine.memory), so
    running out of memory here is about the size and number of images."""
    if isinstance(error, RequestError):
        return str(error)
    if type(error).__name__ == "OutOfMemoryError":
        return "out of GPU memory: try a smaller size or fewer images"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no details'}"[:300]


def save_job(request: GenerationRequest, images: Sequence[Image], seeds: Sequence[int],
             metadata: dict[str, Any], seconds: float, output_dir: Path,
             compression: int = 6) -> Done:
    """Write ``{i}.png`` (with A1111 parameters) and ``grid.png`` under ``output_dir/job_id``,
    all at once (engine.outputs.save_pngs), at zlib level ``compression``; the Done once they
    are written."""
    from engine.outputs import a1111_parameters, make_grid, save_pngs

    folder = (output_dir / request.job_id).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = [(image, folder / f"{index}.png", a1111_parameters(request, seed, metadata, index))
             for index, (image, seed) in enumerate(zip(images, seeds, strict=True))]
    if len(images) > 1:
        files.append((make_grid(images), folder / "grid.png",
                      a1111_parameters(request, seeds[0], metadata)))
    paths = save_pngs(files, compression)
    results = [ImageResult(path, seed, image.width, image.height)
               for path, image, seed in zip(paths[:len(images)], images, seeds, strict=True)]
    grid = paths[len(images)] if len(images) > 1 else None
    return Done(request.job_id, results, grid, seconds, metadata)


def finish_job(request: GenerationRequest, images: Sequence[Image], seeds: Sequence[int],
               metadata: dict[str, Any], seconds: float, settings: EngineSettings,
               ) -> Done | Failed:
    """The job's final event, made on the outbox's pool: Done once its files are written, or
    Failed when they cannot be (a full disk, a folder that is not writable)."""
    try:
        return save_job(request, images, seeds, metadata, seconds, settings.output_dir,
                        settings.png_compression)
    except OSError as error:
        return Failed(request.job_id, f"could not save images: {error}", "error")
    except Exception as error:
        log.exception("job %s: saving its images failed", request.job_id)
        return Failed(request.job_id, failure_text(error), "error")


def operation_metadata(request: GenerationRequest, settings: EngineSettings) -> dict[str, Any]:
    """What an operation's result records. The model goes by its display name, as txt2img's
    does: these values reach PNGs and public embeds, and the request may hold a path."""
    model = model_info(request.model or settings.model, settings).name
    return {"model": model, "operation": request.operation, "sampler": request.sampler,
            "steps": request.steps, "cfg": request.cfg, "seed": request.seed, "warnings": [],
            "params": request.params}


def run_batch(runner: Runner, batch: list[GenerationRequest], inbox: Inbox,
              outbox: Outbox) -> None:
    """Run one batch and end every job in it with exactly one Done or Failed."""
    started = time.perf_counter()
    ended: set[str] = set()

    def fail(kind: Any, reason: str) -> None:
        for request in batch:
            if request.job_id not in ended:
                ended.add(request.job_id)
                outbox.send(Failed(request.job_id, reason, kind))

    def cancelled() -> bool:
        for request in batch:
            if request.job_id not in ended and inbox.is_cancelled(request.job_id):
                ended.add(request.job_id)
                outbox.send(Failed(request.job_id, "cancelled", "cancelled"))
        return len(ended) == len(batch)

    def batch_progress(step: int, total: int, previews: Mapping[str, Preview]) -> None:
        outbox.settled()
        # each job sees only its own images' preview, rendered off this (the GPU) thread
        for request in batch:
            if request.job_id not in ended:
                preview = previews.get(request.job_id)
                if preview is None:
                    outbox.send(Progress(request.job_id, step, total))
                else:
                    outbox.post(request.job_id, partial(
                        preview_progress, request.job_id, step, total, preview))

    def progress(step: int, total: int, preview: Preview | None) -> None:
        (request,) = batch  # operations run one request at a time
        batch_progress(step, total, {} if preview is None else {request.job_id: preview})

    try:
        # txt2img batches, and a txt2img request that runs alone (an image prompt)
        if batch[0].operation == "txt2img":
            outputs = [(out.images, out.seeds, out.metadata)
                       for out in runner.txt2img(batch, progress, cancelled,
                                                batch_progress=batch_progress)]
        else:
            (request,) = batch
            images = get_operation(request.operation)(
                OperationContext(runner, progress, cancelled), request)
            seed = request.seed or 0
            outputs = [(images, [seed + i for i in range(len(images))],
                        operation_metadata(request, runner.settings))]
    except JobCancelled:
        fail("cancelled", "cancelled")
        return
    except RequestError as error:
        fail("invalid", str(error))
        return
    except Exception as error:
        log.exception("job %s failed", ", ".join(request.job_id for request in batch))
        _release_gpu_memory()
        fail("error", failure_text(error))
        return
    cancelled()
    seconds = time.perf_counter() - started
    batch_images = sum(request.count for request in batch)
    for request, (images, seeds, metadata) in zip(batch, outputs, strict=True):
        if request.job_id in ended:
            continue
        ended.add(request.job_id)
        # the PNGs encode while the next batch runs; Done follows once they are written
        outbox.post(request.job_id, partial(
            finish_job, request, images, seeds, {**metadata, "batch_images": batch_images},
            seconds, runner.settings))


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _quiet_libraries() -> None:
    """Library progress bars would interleave with the client's own progress output."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def worker_main(settings: EngineSettings, operation_modules: Sequence[str],
                commands: Connection, events: Connection, log_level: int) -> None:
    """Entry point of the worker process."""
    # Ctrl-C goes to the whole process group; the client decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s[worker]: %(message)s")
    outbox = Outbox(events)
    inbox = Inbox(settings.max_batch)
    threading.Thread(target=read_commands, args=(commands, inbox, outbox), name="commands",
                     daemon=True).start()
    try:
        _quiet_libraries()
        for module in operation_modules:
            importlib.import_module(module)
        from engine.runner import Runner
        from engine.speed import warm_up

        runner = Runner(settings, on_load=outbox.loading)
        # With compile on, the shapes members use are compiled now, not in the first request;
        # each step tells the client's watchdog that the worker is still loading.
        warm_up(runner, settings, alive=outbox.loading)
        outbox.settled()
    except Exception as error:
        log.exception("worker start failed")
        outbox.send(StartupFailed(failure_text(error)))
        return
    outbox.send(Ready(operation_names()))
    while (batch := inbox.take()) is not None:
        try:
            run_batch(runner, batch, inbox, outbox)
        finally:
            outbox.settled()
            inbox.finish()
    outbox.close()  # the last batch's results may still be being written
