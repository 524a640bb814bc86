"""LocalEngine: today's EngineClient behind the seam, with one slot that is free while no
batch of it is in flight. The client here is a fake; the bot tests run the real one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from engine.dispatch import Dispatch
from engine.errors import RequestError
from engine.events import Done, EngineEvent, Failed, Queued
from engine.local import LocalEngine
from engine.request import GenerationRequest
from engine.settings import DEMO_MODEL, EngineSettings


class Client:
    """Each job waits for the test's word; "bad" prompts are refused, "down" ones fail."""

    operations = frozenset({"txt2img", "upscale"})

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.go = asyncio.Event()

    def submit(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        if request.prompt == "bad":
            raise RequestError("prompt", "that prompt is refused")
        if request.prompt == "down":
            raise RuntimeError("the engine client is not started")
        self.submitted.append(request.prompt)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        assert request.job_id is not None
        yield Queued(request.job_id, 0)
        await self.go.wait()
        yield Done(request.job_id, [], None, 0.1)

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Fakes run nothing in batches: submitting together changes nothing."""
        return contextlib.nullcontext()

    async def cancel(self, job_id: str) -> bool:
        return True


def job(prompt: str, job_id: str) -> Dispatch:
    return Dispatch(GenerationRequest(prompt=prompt, job_id=job_id), 1)


async def drain(stream: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    return [event async for event in stream]


async def test_one_slot_free_again_once_every_stream_of_the_batch_ended() -> None:
    client = Client()
    engine = LocalEngine(client, EngineSettings())
    slot = await engine.acquire_slot()
    assert slot.operations == client.operations and not slot.models  # any allowed model
    streams = engine.submit([job("a", "1"), job("b", "2")], slot)
    assert client.submitted == ["a", "b"]  # both before either is read: one batch
    waiting = asyncio.create_task(engine.acquire_slot())
    first = asyncio.create_task(drain(streams[0]))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    client.go.set()
    await first
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the second stream is still open
    assert isinstance((await drain(streams[1]))[-1], Done)
    assert (await asyncio.wait_for(waiting, 1)).id == slot.id


async def test_a_job_the_client_refuses_or_cannot_take_ends_in_its_stream() -> None:
    engine = LocalEngine(Client(), EngineSettings())
    slot = await engine.acquire_slot()
    refused, untaken = engine.submit([job("bad", "1"), job("down", "2")], slot)
    [invalid] = await drain(refused)
    assert isinstance(invalid, Failed) and invalid.kind == "invalid"
    [lost] = await drain(untaken)
    assert isinstance(lost, Failed) and lost.kind == "lost"  # the queue runs it again
    await asyncio.wait_for(engine.acquire_slot(), 1)


async def test_a_released_slot_is_offered_again() -> None:
    engine = LocalEngine(Client(), EngineSettings())
    slot = await engine.acquire_slot()
    engine.release_slot(slot)
    assert (await asyncio.wait_for(engine.acquire_slot(), 1)) == slot


def test_validation_and_catalogue_are_the_configured_models() -> None:
    engine = LocalEngine(Client(), EngineSettings())
    resolved = engine.validate(GenerationRequest(prompt="a cat"))
    assert resolved.width and resolved.steps
    with pytest.raises(RequestError):
        engine.validate(GenerationRequest(prompt="a cat", operation="unknown"))
    catalogue = engine.catalogue()
    assert list(catalogue.models) == [DEMO_MODEL] and catalogue.workers_online == 1
    assert catalogue.operations == Client.operations
