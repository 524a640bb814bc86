"""EngineClient end to end: a real worker process running a tiny random SD1.5 model on CPU."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine.client import EngineClient
from engine.events import Done, EngineEvent, Failed, Progress, Queued
from engine.outputs import read_parameters
from engine.request import RequestError
from engine.settings import EngineSettings
from engine.testmodels import make_test_model
from tests.support.engine_checks import TIMEOUT, collect, decodes, pixels, request
from tests.support.engine_ops import DECODE_LOG

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model("sd15", tmp_path_factory.mktemp("models") / "sd15")


@pytest.fixture(scope="module")
def decode_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decodes") / "decodes.log"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(model_dir: Path, decode_log: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EngineClient]:
    # Both are inherited by the spawned worker. One thread: a tiny model gains nothing from
    # more, and on a shared CI machine threads that spin-wait for each other cost a lot.
    os.environ[DECODE_LOG] = str(decode_log)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    settings = EngineSettings(model=str(model_dir), device="cpu", dtype="float32",
                              output_dir=tmp_path_factory.mktemp("outputs"), preview_every=1,
                              max_steps=500, max_batch=8)
    async with EngineClient(settings, operation_modules=["tests.support.engine_ops"]) as c:
        os.environ.pop("OMP_NUM_THREADS")
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = threads
        yield c
    os.environ.pop(DECODE_LOG, None)


@pytest.mark.parametrize(("fields", "field"), [
    ({"prompt": "  "}, "prompt"),
    ({"steps": 0}, "steps"),
    ({"steps": 501}, "steps"),
    ({"cfg": 31.0}, "cfg"),
    ({"sampler": "nope"}, "sampler"),
    ({"sampler": "flow_euler"}, "sampler"),
    ({"count": 0}, "count"),
    ({"count": 5}, "count"),
    ({"width": 4}, "width"),
    ({"width": 4096, "height": 4096}, "size"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"variation_seed": 2**32}, "variation_seed"),
    ({"variation_strength": 1.5}, "variation_strength"),
    ({"model": "someone/else"}, "model"),
    ({"operation": "nope"}, "operation"),
    ({"job_id": "../escape"}, "job_id"),
])
async def test_bad_input_is_refused_before_anything_is_queued(client, fields, field):
    with pytest.raises(RequestError) as error:
        client.submit(request(**fields))
    assert error.value.field == field
    assert str(error.value)
    assert client.in_flight == 0


async def test_events_progress_previews_and_saved_outputs(client):
    job = request(prompt="a blue square", steps=3, count=4, seed=41, width=64, height=64)
    events = await collect(client.submit(job))
    assert events[0] == Queued(job.job_id, 0)
    steps = [event for event in events if isinstance(event, Progress)]
    assert [(p.step, p.total) for p in steps] == [(1, 3), (2, 3), (3, 3)]
    previews = [Image.open(io.BytesIO(p.preview)) for p in steps if p.preview]
    assert previews and all(p.format == "PNG" and max(p.size) <= 256 for p in previews)
    done = events[-1]
    assert isinstance(done, Done) and len(events) == 5
    assert [image.seed for image in done.images] == [41, 42, 43, 44]
    for index, image in enumerate(done.images):
        assert image.path.name == f"{index}.png" and image.path.parent.name == job.job_id
        assert Image.open(image.path).size == (64, 64) == (image.width, image.height)
        text = read_parameters(image.path)
        assert text is not None and text.startswith("a blue square")
        assert f"Seed: {image.seed}" in text
    assert done.grid is not None and Image.open(done.grid).size == (128, 128)
    assert done.metadata["steps"] == 3 and done.metadata["seed"] == 41


def last_preview(events: list[EngineEvent]) -> np.ndarray:
    previews = [e.preview for e in events if isinstance(e, Progress) and e.preview]
    assert previews
    return np.asarray(Image.open(io.BytesIO(previews[-1])).convert("L"), dtype=np.int16)


async def test_compatible_requests_are_batched_and_match_running_alone(client):
    # Incompatible (other steps), so the others queue up behind it together.
    blocker = request(steps=6)
    jobs = [request(prompt="a red circle", negative_prompt="dark", seed=5, count=1),
            request(prompt="a green star", negative_prompt="blurry", seed=9, count=2),
            request(prompt="a yellow cross", negative_prompt="noisy", seed=2**32 - 1,
                    count=1, variation_seed=4, variation_strength=0.5)]
    streams = [client.submit(blocker), *(client.submit(job) for job in jobs)]
    results = await asyncio.gather(*(collect(stream) for stream in streams))
    batched = [events[-1] for events in results[1:] if isinstance(events[-1], Done)]
    assert len(batched) == 3
    assert [done.metadata["batch_images"] for done in batched] == [4, 4, 4]

    for job, events, together in zip(jobs, results[1:], batched, strict=True):
        solo = await collect(client.submit(job.model_copy(update={"job_id": "alone-"
                                                                         + job.job_id})))
        alone = solo[-1]
        assert isinstance(alone, Done) and alone.metadata["batch_images"] == job.count
        # each batched job sees a preview of its own images only, as it would alone
        shared, own = last_preview(events), last_preview(solo)
        assert shared.shape == own.shape and shared.shape[1] == job.count * shared.shape[0]
        assert np.abs(shared - own).max() <= 2
        assert [i.seed for i in alone.images] == [i.seed for i in together.images]
        for a, b in zip(alone.images, together.images, strict=True):
            assert np.abs(pixels(a.path) - pixels(b.path)).max() <= 2


async def test_requests_submitted_together_to_an_idle_worker_share_one_batch(client):
    """One by one, an idle worker could start the first before the others arrive; together()
    sends them as one message, so the queue's batch is the worker's batch."""
    jobs = [request(prompt=f"a shape {i}", seed=i, count=1) for i in range(3)]
    with client.together():
        streams = [client.submit(job) for job in jobs]
    results = await asyncio.gather(*(collect(stream) for stream in streams))
    ends = [events[-1] for events in results]
    assert all(isinstance(end, Done) for end in ends)
    assert [end.metadata["batch_images"] for end in ends] == [3, 3, 3]


async def test_cancel_a_queued_and_a_running_job(client, decode_log):
    running = request(steps=400, width=64, height=64)
    queued = request(steps=3)
    running_stream = client.submit(running)
    queued_events = asyncio.ensure_future(collect(client.submit(queued)))
    seen: list[EngineEvent] = []
    async with asyncio.timeout(TIMEOUT):
        async for event in running_stream:
            seen.append(event)
            if isinstance(event, Progress):
                break
        before = decodes(decode_log)
        assert await client.cancel(queued.job_id)
        queued_end = (await queued_events)[-1]
        assert [type(e) for e in await queued_events] == [Queued, Failed]
        assert isinstance(queued_end, Failed) and queued_end.kind == "cancelled"
        assert await client.cancel(running.job_id)
        seen += [event async for event in running_stream]
    end = seen[-1]
    assert isinstance(end, Failed) and end.kind == "cancelled"
    assert not any(isinstance(e, Done) for e in seen)
    assert sum(isinstance(e, Progress) for e in seen) < 400
    assert decodes(decode_log) == before  # stopped between steps, never decoded
    assert not (client.settings.output_dir / running.job_id).exists()
    assert not await client.cancel(running.job_id)  # already over
    assert not await client.cancel("no-such-job")
    # The counter does count: a finished job decodes.
    assert isinstance((await collect(client.submit(request())))[-1], Done)
    assert decodes(decode_log) > before


async def test_operation_registered_by_a_module_runs_in_the_worker(client, tmp_path):
    assert {"txt2img", "test_solid"} <= client.operations
    pid_file = tmp_path / "pid"
    job = request(operation="test_solid", count=2, width=40, height=24,
                  params={"color": [200, 10, 30], "pid_file": str(pid_file)})
    events = await collect(client.submit(job))
    assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(1, 3), (2, 3),
                                                                             (3, 3)]
    done = events[-1]
    assert isinstance(done, Done) and len(done.images) == 2 and done.grid is not None
    assert all((pixels(i.path) == (200, 10, 30)).all() for i in done.images)
    assert int(pid_file.read_text()) == client.worker_pid != os.getpid()


async def test_killed_worker_fails_its_jobs_as_crashed_and_restarts(client):
    running, waiting = request(steps=400, width=64, height=64), request(steps=3)
    running_stream = client.submit(running)
    waiting_events = asyncio.ensure_future(collect(client.submit(waiting)))
    old_pid, crashes = client.worker_pid, client.crashes
    assert old_pid is not None
    async with asyncio.timeout(TIMEOUT):
        async for event in running_stream:
            if isinstance(event, Progress):
                os.kill(old_pid, signal.SIGKILL)
                break
        rest = [event async for event in running_stream]
    for end in (rest[-1], (await waiting_events)[-1]):
        assert isinstance(end, Failed) and end.kind == "crashed"
        assert end.reason == "worker crashed (exit code -9)"
    assert client.crashes == crashes + 1 and client.stall_kills == 0
    after = (await collect(client.submit(request())))[-1]
    assert isinstance(after, Done)
    assert client.worker_pid not in (None, old_pid)
    assert "test_solid" in client.operations
