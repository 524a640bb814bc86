"""Today's single worker process behind the seam of ``engine.dispatch``: ``LocalEngine``.

The ``EngineClient`` is unchanged; this wraps it in the ``Engine`` protocol with exactly one
slot, free when no batch of it is in flight, so the queue runs one batch at a time, as before.
Light on purpose: the bot imports it (the client starts the worker process by itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from engine.dispatch import Catalogue, Dispatch, ModelEntry, Slot, model_entries
from engine.errors import RequestError
from engine.events import Done, EngineEvent, Failed
from engine.request import GenerationRequest, validate_request
from engine.settings import EngineSettings

log = logging.getLogger(__name__)


class LocalClient(Protocol):
    """What LocalEngine uses of ``engine.client.EngineClient`` (tests pass fakes of it)."""

    @property
    def operations(self) -> frozenset[str]: ...

    def submit(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]: ...

    def together(self) -> AbstractContextManager[None]: ...

    async def cancel(self, job_id: str) -> bool: ...


class LocalEngine:
    """One worker process on this host, as one slot.

    ``settings`` are what requests are validated with; the bot passes its own, which may allow
    other models than the client it shares (tests share one worker between bots).
    """

    def __init__(self, client: LocalClient, settings: EngineSettings) -> None:
        self.client = client
        self.settings = settings
        #: Set while no batch is in flight: the slot may be handed out.
        self._free = asyncio.Event()
        self._free.set()
        #: Streams of the batch in flight that have not ended yet.
        self._open = 0
        self._models: dict[str, ModelEntry] | None = None

    @property
    def operations(self) -> frozenset[str]:
        """Operation names registered in the worker (known once it started)."""
        return self.client.operations

    async def acquire_slot(self) -> Slot:
        while not self._free.is_set():
            await self._free.wait()
        self._free.clear()
        return Slot(id="local", worker="local", models=frozenset(),
                    operations=self.client.operations, max_batch=self.settings.max_batch,
                    max_pixels=self.settings.max_pixels)

    def release_slot(self, slot: Slot) -> None:
        self._free.set()

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        return validate_request(request, self.settings, operations=self.operations or None)

    def submit(self, jobs: Sequence[Dispatch], slot: Slot) -> list[AsyncIterator[EngineEvent]]:
        """All submitted before any is read, so that the client batches them. A job the client
        refuses (it no longer validates) ends at once as ``Failed(kind="invalid")``; one it
        cannot take (it is not running) as ``Failed(kind="lost")``, which the queue runs again."""
        with self.client.together():
            streams = [self._submit_one(job) for job in jobs]
        self._open = len(streams)
        if not streams:
            self._free.set()
        return streams

    def _submit_one(self, job: Dispatch) -> AsyncIterator[EngineEvent]:
        job_id = job.request.job_id
        assert job_id is not None
        stream: AsyncIterator[EngineEvent]
        try:
            stream = self.client.submit(job.request)
        except RequestError as error:
            stream = _ended(Failed(job_id, str(error), "invalid"))
        except Exception as error:
            log.exception("job %s: the engine client could not take it", job_id)
            stream = _ended(Failed(job_id, f"the engine could not take it: {error}", "lost"))
        return _SlotStream(stream, self._stream_ended)

    async def cancel(self, job_id: str) -> bool:
        return await self.client.cancel(job_id)

    def catalogue(self) -> Catalogue:
        """The configured models (read once, from their small config files) and one worker,
        which the client starts again whenever it dies."""
        if self._models is None:
            self._models = model_entries(self.settings)
        return Catalogue(self._models, self.operations, workers_online=1)

    def _stream_ended(self) -> None:
        self._open -= 1
        if self._open == 0:
            self._free.set()


class _SlotStream:
    """One job's stream from the client. The slot is free again once every stream of the batch
    has been read to its end, that is after the queue has handled each job's last event, as
    when it ran one batch at a time itself. A class rather than an async generator, so that
    whoever waits on it is seen waiting on the client's own stream (the job lifecycle tests
    tell idle tasks so)."""

    def __init__(self, stream: AsyncIterator[EngineEvent], ended: Callable[[], None]) -> None:
        self._stream = stream
        self._ended = ended
        self._last_read = False
        self._finished = False

    def __aiter__(self) -> _SlotStream:
        return self

    async def __anext__(self) -> EngineEvent:
        if self._last_read:
            self._finish()
            raise StopAsyncIteration
        try:
            event = await anext(self._stream)
        except BaseException:  # its end, an error, or the reader cancelled: nobody reads on
            self._finish()
            raise
        self._last_read = isinstance(event, Done | Failed)
        return event

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._ended()


async def _ended(event: Failed) -> AsyncIterator[EngineEvent]:
    yield event
