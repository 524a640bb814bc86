"""Engines for the job queue's tests, behind the seam of ``engine.dispatch``.

``TrustingLocalEngine`` is the real LocalEngine around a fake client, for tests of the queue
whose requests name no real model. ``FakeEngine`` has workers the test brings online, each
with its models, and jobs that run until the test ends them: done (twice, as a replayed
message), failed, or lost, with a zombie's late result after it if asked. Every wait is a
``Queue.get`` or an ``Event.wait``, which the lifecycle machines' ``settle`` tells idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.dispatch import Catalogue, Dispatch, ModelEntry, Slot
from engine.errors import RequestError
from engine.events import Done, EngineEvent, Failed, FailureKind, ImageResult, Progress
from engine.local import LocalClient, LocalEngine
from engine.request import GenerationRequest
from engine.settings import EngineSettings


class TrustingLocalEngine(LocalEngine):
    """LocalEngine around a fake client: every request is taken as valid (the queue's tests
    name models that no settings allow; validation has tests of its own)."""

    def __init__(self, client: LocalClient) -> None:
        super().__init__(client, EngineSettings())

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        return request


class FakeStream:
    """One attempt of one job, as the test pushes its events; it ends after the last one."""

    def __init__(self, job_id: str, attempt: int, worker: FakeWorker) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.worker = worker
        self.events: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        #: The engine has said its last word (the job left the worker).
        self.ended = False
        self._closed = False

    def push(self, *events: EngineEvent) -> None:
        """Events, then the end of the stream if one of them is a Done or Failed."""
        assert not self.ended, f"job {self.job_id}: events after its end"
        for event in events:
            self.events.put_nowait(event)
        if any(isinstance(event, Done | Failed) for event in events):
            self.ended = True
            self.events.put_nowait(None)
            self.worker.stream_ended(self)

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> EngineEvent:
        if self._closed:
            raise StopAsyncIteration
        event = await self.events.get()
        if event is None:
            self._closed = True
            raise StopAsyncIteration
        return event


@dataclass
class FakeWorker:
    """A worker: the models it can run and has loaded; one slot, offered while it is free."""

    name: str
    models: frozenset[str]
    loaded: frozenset[str] = frozenset()
    max_batch: int = 8
    online: bool = False
    #: Streams of the batch it runs now.
    running: list[FakeStream] = field(default_factory=list)
    engine: FakeEngine | None = None

    def slot(self, number: int) -> Slot:
        return Slot(id=f"{self.name}:{number}", worker=self.name, models=self.models,
                    loaded=self.loaded, max_batch=self.max_batch)

    def stream_ended(self, stream: FakeStream) -> None:
        if stream in self.running:
            self.running.remove(stream)
            if not self.running and self.engine is not None:
                self.engine.offer(self)


class FakeEngine:
    """Workers that the test brings online and whose jobs it ends; the ``Engine`` protocol."""

    def __init__(self, workers: Sequence[FakeWorker], output_dir: Path) -> None:
        self.workers = {worker.name: worker for worker in workers}
        for worker in workers:
            worker.engine = self
        self.output_dir = output_dir
        self.ready: asyncio.Queue[Slot] = asyncio.Queue()
        self.offers = 0
        #: Every attempt submitted: (worker, job ids of the batch, their attempts), in order.
        self.batches: list[tuple[str, list[str], list[int]]] = []
        #: The stream of each job's latest attempt.
        self.streams: dict[str, FakeStream] = {}
        #: Whether a cancel stops a job at once; if not, its result may still come.
        self.honour_cancel = True
        #: Slots given back by the queue.
        self.released: list[Slot] = []

    # -- the test's side -----------------------------------------------------------------------

    def start(self, name: str) -> None:
        """The worker comes online and offers its slot."""
        worker = self.workers[name]
        worker.online = True
        self.offer(worker)

    def offer(self, worker: FakeWorker) -> None:
        if worker.online:
            self.offers += 1
            self.ready.put_nowait(worker.slot(self.offers))

    def live(self) -> list[str]:
        """Jobs running on a worker, in the order they were submitted."""
        return [job_id for job_id, stream in self.streams.items() if not stream.ended]

    def where(self, job_id: str) -> str:
        return self.streams[job_id].worker.name

    def done(self, job_id: str, *, times: int = 1) -> None:
        """The job's result; ``times=2``: the same message arrives twice (a replay)."""
        stream = self.streams[job_id]
        stream.push(*[self.result(job_id)] * times)

    def result(self, job_id: str) -> Done:
        return Done(job_id, [ImageResult(self.output_dir / f"{job_id}.png", 1, 32, 32)], None,
                    0.1)

    def fail(self, job_id: str, kind: FailureKind) -> None:
        self.streams[job_id].push(Failed(job_id, f"the engine says {kind}", kind))

    def lose(self, job_id: str, *, zombie_result: bool = False) -> None:
        """The job's lease expired, its worker went away: ``Failed(kind="lost")``, and then,
        with ``zombie_result``, the late result of that lost attempt. The worker is offline
        until the test starts it again."""
        stream = self.streams[job_id]
        stream.worker.online = False
        events: list[EngineEvent] = [Failed(job_id, "its worker went away", "lost")]
        if zombie_result:
            events.append(self.result(job_id))
        stream.push(*events)

    def progress(self, job_id: str) -> None:
        self.streams[job_id].push(Progress(job_id, 1, 2))

    # -- the queue's side: the Engine protocol -------------------------------------------------

    async def acquire_slot(self) -> Slot:
        return await self.ready.get()

    def release_slot(self, slot: Slot) -> None:
        self.released.append(slot)

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        if request.model not in self.catalogue().models:
            raise RequestError("model", "that model is not available here")
        return request

    def submit(self, jobs: Sequence[Dispatch], slot: Slot) -> list[FakeStream]:
        worker = self.workers[slot.worker]
        assert not worker.running, f"slot {slot.id} used while {worker.name} is busy"
        assert len({job.request.model for job in jobs}) == 1
        worker.loaded = frozenset({jobs[0].request.model or ""})
        streams = []
        for job in jobs:
            job_id = job.request.job_id
            assert job_id is not None and job_id not in self.live(), f"{job_id} runs twice"
            stream = FakeStream(job_id, job.attempt, worker)
            self.streams.pop(job_id, None)  # the latest attempt last, for live()
            self.streams[job_id] = stream
            streams.append(stream)
        worker.running = list(streams)
        self.batches.append((worker.name, [stream.job_id for stream in streams],
                             [job.attempt for job in jobs]))
        return streams

    async def cancel(self, job_id: str) -> bool:
        if job_id not in self.live():
            return False
        if self.honour_cancel:
            self.fail(job_id, "cancelled")
        return True

    def catalogue(self) -> Catalogue:
        names = sorted({model for worker in self.workers.values() for model in worker.models})
        return Catalogue({name: ModelEntry(name, "sd15", 32, 32, 2, 5.0, "euler")
                          for name in names}, frozenset({"txt2img"}),
                         workers_online=sum(w.online for w in self.workers.values()))
