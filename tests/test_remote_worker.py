"""``imaginebot worker`` as a real process on a tiny SD1.5 model, driven through RedisEngine:
no worker (the slot waits), a round trip with previews and results, a cancel, and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image
from redis import Redis

from engine.dispatch import Dispatch
from engine.events import Done, EngineEvent, Failed, Progress, Queued
from engine.outputs import read_parameters
from engine.remote.engine import RedisEngine
from engine.remote.protocol import Keys
from engine.request import GenerationRequest
from engine.settings import EngineSettings
from tests.support.models import TinyModel
from tests.support.redis import shared_redis_url

pytestmark = pytest.mark.slow

TIMEOUT = 180
#: Much shorter than the long job below: only lease renewals keep it on its worker.
LEASE = 3
PREFIX = f"test-worker-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def model(tiny_model: TinyModel) -> Path:
    return tiny_model("sd15")


@pytest.fixture(scope="module")
def start_worker(model: Path, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts the module's one worker process on first call (so a test can first see none)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        if not started:
            env = {**os.environ, "IMAGINEBOT_REDIS_PREFIX": PREFIX, "OMP_NUM_THREADS": "1",
                   "IMAGINEBOT_LEASE_SECONDS": str(LEASE), "IMAGINEBOT_HEARTBEAT_SECONDS": "0.5",
                   "IMAGINEBOT_MAX_STEPS": "500", "IMAGINEBOT_PREVIEW_EVERY": "1",
                   "IMAGINEBOT_DTYPE": "float32"}
            with log.open("wb") as out:
                started.append(subprocess.Popen(
                    [sys.executable, "-m", "bot.cli", "worker", "--queue", shared_redis_url(),
                     "--name", "w1", "--device", "cpu", "--models", str(model),
                     "--max-batch", "4"], env=env, stdout=out, stderr=subprocess.STDOUT))
        return started[0]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
    if started and started[0].returncode not in (0, None):
        print(log.read_text(errors="replace")[-4000:])


@pytest_asyncio.fixture
async def engine(model: Path, tmp_path: Path) -> AsyncIterator[RedisEngine]:
    settings = EngineSettings(model=str(model), output_dir=tmp_path, lease_seconds=LEASE,
                              heartbeat_seconds=0.5, redis_prefix=PREFIX, max_steps=500)
    engine = RedisEngine(settings, shared_redis_url())
    await engine.start()
    yield engine
    await engine.close()


def request(**fields: object) -> GenerationRequest:
    values: dict[str, object] = {"prompt": "a red circle", "steps": 2, "count": 2, "seed": 3,
                                 "sampler": "euler", "width": 64, "height": 64}
    return GenerationRequest(**{**values, **fields})


async def test_with_no_worker_the_slot_waits_then_a_started_worker_runs_the_job(
        engine, start_worker, tmp_path):
    acquire = asyncio.create_task(engine.acquire_slot())
    await asyncio.sleep(1)
    assert not acquire.done()
    assert engine.catalogue().workers_online == 0
    start_worker()
    async with asyncio.timeout(TIMEOUT):
        slot = await acquire
    assert slot.worker == "w1" and slot.max_batch == 4

    job = engine.validate(request())
    (stream,) = engine.submit([Dispatch(job, 1)], slot)
    async with asyncio.timeout(TIMEOUT):
        events: list[EngineEvent] = [event async for event in stream]
    assert events[0] == Queued(job.job_id, 0)
    steps = [event for event in events if isinstance(event, Progress)]
    assert [(p.step, p.total) for p in steps] == [(1, 2), (2, 2)]
    assert steps[0].preview is not None  # the first preview always goes through
    done = events[-1]
    assert isinstance(done, Done), events
    assert [image.seed for image in done.images] == [3, 4]
    for index, image in enumerate(done.images):
        assert image.path == tmp_path.resolve() / job.job_id / f"{index}.png"
        assert Image.open(image.path).size == (64, 64)
        assert (read_parameters(image.path) or "").startswith("a red circle")
    assert done.grid is not None and done.grid.exists()
    assert engine.catalogue().workers_online == 1


async def test_a_job_outlives_its_lease_by_renewals_and_cancel_stops_it(engine, start_worker):
    start_worker()
    async with asyncio.timeout(TIMEOUT):
        slot = await engine.acquire_slot()
    # Long enough to outlive its lease on an idle machine too (64x64 ran out in under 5 s).
    job = engine.validate(request(steps=500, count=1, width=128, height=128))
    (stream,) = engine.submit([Dispatch(job, 1)], slot)
    events: list[EngineEvent] = []
    loop = asyncio.get_running_loop()
    started = None
    cancelled = False
    async with asyncio.timeout(TIMEOUT):
        async for event in stream:
            events.append(event)
            if isinstance(event, Progress):
                started = started or loop.time()
                if loop.time() - started > 1.5 * LEASE and not cancelled:
                    cancelled = await engine.cancel(job.job_id)
                    assert cancelled
    assert cancelled, "the job ended before it outlived its lease"
    end = events[-1]
    assert isinstance(end, Failed) and end.kind == "cancelled", events
    assert max(e.step for e in events if isinstance(e, Progress)) < 500


async def test_sigterm_drains_and_deregisters(start_worker):
    process = start_worker()
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 60) == 0
    client = Redis.from_url(shared_redis_url())
    try:
        assert not client.hexists(Keys(PREFIX).workers, "w1")
        assert not client.exists(Keys(PREFIX).heartbeat("w1"))
    finally:
        client.close()
