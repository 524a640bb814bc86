"""The engine contract, held by both engines the bot can run on: ``LocalEngine`` (today's one
worker process) and ``RedisEngine`` (an ``imaginebot worker`` subprocess, over a real Redis).

The same tests as tests/test_engine_client.py, through the seam the bot's queue uses
(acquire_slot, submit, cancel): validation, events with progress and previews, saved images
with their parameters, batching, cancel between steps without a decode, operations of a
module, and a crashed GPU process. Both engines' workers load tests.support.engine_ops.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import redis
from PIL import Image

from engine.client import EngineClient
from engine.dispatch import Dispatch, Engine
from engine.events import Done, EngineEvent, Failed, Progress, Queued
from engine.local import LocalEngine
from engine.outputs import read_parameters
from engine.remote.engine import RedisEngine
from engine.request import GenerationRequest, RequestError
from engine.settings import EngineSettings
from tests.support.engine_checks import TIMEOUT, collect, decodes, pixels, request
from tests.support.engine_ops import CRASH_PROMPT, DECODE_LOG
from tests.support.models import TinyModel
from tests.support.redis import shared_redis_url
from tests.support.workers import HEARTBEAT_SECONDS, LEASE_SECONDS, WorkerProcess, until

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

OPS = "tests.support.engine_ops"


@dataclass
class Subject:
    """One engine under test, and what a test needs to know of it."""

    engine: Engine
    settings: EngineSettings
    decode_log: Path
    #: The remote engine's worker process (None for the local engine).
    worker: WorkerProcess | None = None


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["local", "redis"])
async def subject(request: pytest.FixtureRequest, tiny_model: TinyModel,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Subject]:
    model = tiny_model("sd15")
    folder = tmp_path_factory.mktemp(request.param)
    decode_log = folder / "decodes.log"
    settings = EngineSettings(model=str(model), device="cpu", dtype="float32",
                              output_dir=folder / "outputs", preview_every=1, max_steps=500,
                              max_batch=8, lease_seconds=LEASE_SECONDS,
                              heartbeat_seconds=HEARTBEAT_SECONDS,
                              redis_prefix=f"contract-{uuid.uuid4().hex[:8]}")
    if request.param == "local":
        # Inherited by the spawned GPU process, as the remote worker's is by its environment.
        os.environ[DECODE_LOG] = str(decode_log)
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            async with EngineClient(settings, [OPS]) as client:
                yield Subject(LocalEngine(client, settings), settings, decode_log)
        finally:
            os.environ.pop(DECODE_LOG, None)
            os.environ.pop("OMP_NUM_THREADS", None)
        return
    url = shared_redis_url()
    admin = redis.Redis.from_url(url)
    user, password = worker_acl(admin, settings.redis_prefix, "w1")
    worker_url = url.replace("redis://", f"redis://{user}:{password}@", 1)
    worker = WorkerProcess(worker_url, "w1", model, folder / "worker.log",
                           prefix=settings.redis_prefix, operation_modules=[OPS], max_batch=8,
                           env={DECODE_LOG: str(decode_log)}).start()
    engine = RedisEngine(settings, url)
    await engine.start()
    try:
        await asyncio.to_thread(worker.wait_registered)
        await until(lambda: engine.catalogue().workers_online == 1)  # its next reap
        yield Subject(engine, settings, decode_log, worker)
    finally:
        await engine.close()
        worker.close()
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def worker_acl(admin: redis.Redis, prefix: str, worker: str) -> tuple[str, str]:
    """Create docs/scaleout.md's ACL user of worker gpu0, for this prefix and worker; the
    remote worker runs under it, so that the documented ACL is one that works. Returns the
    user and its password."""
    text = (Path(__file__).parents[1] / "docs" / "scaleout.md").read_text()
    found = re.search(r"^ACL SETUSER worker-gpu0 (?:.*\\\n)*.*$", text, re.M)
    assert found, "docs/scaleout.md lost its worker ACL"
    words = [word.replace("imaginebot:", f"{prefix}:").replace("gpu0", worker)
             for word in found.group(0).replace("\\\n", " ").split()]
    admin.execute_command(*words)
    password = next(word[1:] for word in words if word.startswith(">"))
    return words[2], password


async def submit(engine: Engine, *requests: GenerationRequest
                 ) -> list[AsyncIterator[EngineEvent]]:
    """One batch on the next free slot, as the queue sends it (attempt 1)."""
    async with asyncio.timeout(TIMEOUT):
        slot = await engine.acquire_slot()
    return engine.submit([Dispatch(engine.validate(r), 1) for r in requests], slot)


async def run(engine: Engine, request: GenerationRequest) -> list[EngineEvent]:
    (stream,) = await submit(engine, request)
    return await collect(stream)


@pytest.mark.parametrize(("fields", "field"), [
    ({"prompt": "  "}, "prompt"),
    ({"steps": 501}, "steps"),
    ({"sampler": "flow_euler"}, "sampler"),
    ({"count": 5}, "count"),
    ({"width": 4096, "height": 4096}, "size"),
    ({"model": "someone/else"}, "model"),
    ({"operation": "nope"}, "operation"),
])
async def test_bad_input_is_refused_by_validation(subject: Subject, fields, field):
    with pytest.raises(RequestError) as error:
        subject.engine.validate(request(**fields))
    assert error.value.field == field and str(error.value)


async def test_events_progress_previews_and_saved_outputs(subject: Subject):
    job = request(prompt="a blue square", steps=3, count=4, seed=41, width=64, height=64)
    events = await run(subject.engine, job)
    assert events[0] == Queued(job.job_id, 0)
    steps = [event for event in events if isinstance(event, Progress)]
    assert [(p.step, p.total) for p in steps] == [(1, 3), (2, 3), (3, 3)]
    # The remote worker sends at most one preview per 1.5 s per job; the first always goes.
    previews = [Image.open(io.BytesIO(p.preview)) for p in steps if p.preview]
    assert previews and all(p.format == "PNG" and max(p.size) <= 256 for p in previews)
    done = events[-1]
    assert isinstance(done, Done) and len(events) == 5
    assert [image.seed for image in done.images] == [41, 42, 43, 44]
    output = subject.settings.output_dir.resolve() / job.job_id
    for index, image in enumerate(done.images):
        assert image.path == output / f"{index}.png"  # on the bot's disk, whichever engine
        assert Image.open(image.path).size == (64, 64) == (image.width, image.height)
        text = read_parameters(image.path)
        assert text is not None and text.startswith("a blue square")
        assert f"Seed: {image.seed}" in text
    assert done.grid is not None and Image.open(done.grid).size == (128, 128)
    assert done.metadata["steps"] == 3 and done.metadata["seed"] == 41


async def test_compatible_jobs_of_one_slot_run_as_one_batch(subject: Subject):
    # The worker takes the first job as soon as it arrives; an incompatible one (other steps)
    # first keeps it busy while the others arrive, so that they run together.
    blocker = request(steps=6)
    jobs = [request(prompt="a red circle", seed=5, count=1),
            request(prompt="a green star", seed=9, count=2),
            request(prompt="a yellow cross", seed=2**32 - 1, count=1, variation_seed=4,
                    variation_strength=0.5)]
    streams = await submit(subject.engine, blocker, *jobs)
    results = await asyncio.gather(*map(collect, streams))
    batched = [events[-1] for events in results[1:]]
    assert all(isinstance(done, Done) for done in batched), batched
    assert [done.metadata["batch_images"] for done in batched] == [4, 4, 4]  # type: ignore[union-attr]
    alone = (await run(subject.engine, jobs[1].model_copy(update={"job_id": "alone"})))[-1]
    assert isinstance(alone, Done) and alone.metadata["batch_images"] == 2
    together = batched[1]
    assert isinstance(together, Done)
    for a, b in zip(alone.images, together.images, strict=True):
        assert a.seed == b.seed and np.abs(pixels(a.path) - pixels(b.path)).max() <= 2


async def test_cancel_a_running_job_stops_it_between_steps(subject: Subject):
    running = request(steps=400, width=64, height=64)
    (stream,) = await submit(subject.engine, running)
    seen: list[EngineEvent] = []
    async with asyncio.timeout(TIMEOUT):
        async for event in stream:
            seen.append(event)
            if isinstance(event, Progress):
                break
        before = decodes(subject.decode_log)
        assert await subject.engine.cancel(running.job_id)
        seen += [event async for event in stream]
    end = seen[-1]
    assert isinstance(end, Failed) and end.kind == "cancelled", seen
    assert not any(isinstance(e, Done) for e in seen)
    assert sum(isinstance(e, Progress) for e in seen) < 400
    assert decodes(subject.decode_log) == before  # stopped between steps, never decoded
    assert not (subject.settings.output_dir / running.job_id).exists()
    assert not await subject.engine.cancel(running.job_id)  # already over
    assert not await subject.engine.cancel("no-such-job")
    # The counter does count: a finished job decodes.
    assert isinstance((await run(subject.engine, request()))[-1], Done)
    assert decodes(subject.decode_log) > before


async def test_operation_registered_by_a_module_runs_in_the_worker(subject: Subject, tmp_path):
    assert {"txt2img", "test_solid"} <= subject.engine.catalogue().operations
    pid_file = tmp_path / "pid"
    job = request(operation="test_solid", count=2, width=40, height=24,
                  params={"color": [200, 10, 30], "pid_file": str(pid_file)})
    events = await run(subject.engine, job)
    assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(1, 3), (2, 3),
                                                                             (3, 3)]
    done = events[-1]
    assert isinstance(done, Done) and len(done.images) == 2 and done.grid is not None
    assert all((pixels(i.path) == (200, 10, 30)).all() for i in done.images)
    ran_in = int(pid_file.read_text())
    assert ran_in != os.getpid()
    if subject.worker is not None:
        assert ran_in != subject.worker.pid  # the GPU process, not the worker's agent


async def test_a_crashed_gpu_process_fails_its_job_and_the_worker_serves_on(subject: Subject):
    end = (await run(subject.engine, request(prompt=f"please {CRASH_PROMPT} now")))[-1]
    assert isinstance(end, Failed) and end.kind == "crashed", end
    assert end.reason == "worker crashed (exit code -9)"
    after = (await run(subject.engine, request()))[-1]
    assert isinstance(after, Done)
    # The remote worker stayed registered through it: the same one ran the next job.
    assert subject.engine.catalogue().workers_online == 1
    if subject.worker is not None:
        assert subject.worker.process is not None and subject.worker.process.poll() is None
