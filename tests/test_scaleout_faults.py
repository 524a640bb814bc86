"""The remote engine under faults: two real ``imaginebot worker`` processes and a real Redis.

Each worker reaches Redis through a proxy of its own (so that one of them can be cut off);
the bot's RedisEngine talks to Redis directly. Leases are 2 s and heartbeats 0.5 s. Every
test ends with one event per attempt: a Done or a Failed, and the queue (not the engine) runs a
lost job again as the next attempt, which these tests do by hand. The destructive tests come
last: a SIGKILLed worker is not restarted.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import cast

import pytest
import pytest_asyncio
import redis

from engine.dispatch import Dispatch, Slot
from engine.events import Done, EngineEvent, Failed, Progress
from engine.remote.engine import RedisEngine
from engine.remote.protocol import Keys, parse_event
from engine.request import GenerationRequest
from engine.settings import EngineSettings
from tests.support.models import TinyModel
from tests.support.redis import RedisServer, TcpProxy
from tests.support.workers import HEARTBEAT_SECONDS, LEASE_SECONDS, WorkerProcess, until

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT = 120
#: Steps of a job long enough to be interrupted (a few seconds on one CPU thread).
LONG = 150


@dataclass
class Cluster:
    server: RedisServer
    keys: Keys
    workers: dict[str, WorkerProcess]
    proxies: dict[str, TcpProxy]
    settings: EngineSettings

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url)


@pytest.fixture(scope="module")
def cluster(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("faults")
    server = RedisServer(folder / "redis", appendonly=True)
    server.start()
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    model = tiny_model("sd15")
    proxies = {name: TcpProxy(server.url) for name in ("w1", "w2")}
    workers = {name: WorkerProcess(proxies[name].url, name, model, folder / f"{name}.log",
                                   prefix=prefix).start() for name in proxies}
    settings = EngineSettings(model=str(model), device="cpu", dtype="float32",
                              output_dir=folder / "outputs", preview_every=1, max_steps=500,
                              lease_seconds=LEASE_SECONDS, heartbeat_seconds=HEARTBEAT_SECONDS,
                              redis_prefix=prefix)
    try:
        for worker in workers.values():
            worker.wait_registered()
        yield Cluster(server, Keys(prefix), workers, proxies, settings)
    finally:
        for worker in workers.values():
            worker.close()
        for proxy in proxies.values():
            proxy.close()
        server.kill()


@pytest_asyncio.fixture(loop_scope="module")
async def engine(cluster: Cluster) -> AsyncIterator[RedisEngine]:
    """The bot's side, once both workers are registered and offering slots."""
    engine = RedisEngine(cluster.settings, cluster.server.url)
    await engine.start()
    await until(lambda: engine.catalogue().workers_online == len(
        [w for w in cluster.workers.values() if w.process and w.process.poll() is None]))
    yield engine
    await engine.close()


def request(**fields: object) -> GenerationRequest:
    values: dict[str, object] = {"prompt": "a red circle", "steps": 2, "count": 1, "seed": 7,
                                 "sampler": "euler"}
    return GenerationRequest(**{**values, **fields})


async def slot_on(engine: RedisEngine, worker: str | None = None) -> Slot:
    """The next free slot, of ``worker`` if named (others are given back)."""
    passed: list[Slot] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                slot = await engine.acquire_slot()
                if worker is None or slot.worker == worker:
                    return slot
                passed.append(slot)
    finally:
        for other in passed:
            engine.release_slot(other)


async def start_long(engine: RedisEngine) -> tuple[GenerationRequest, str,
                                                  AsyncIterator[EngineEvent]]:
    """A LONG job as attempt 1 on the next free slot, once its first step is done (the moment
    each fault strikes); returns it, the worker it runs on, and the rest of its events."""
    job = engine.validate(request(steps=LONG))
    slot = await slot_on(engine)
    (stream,) = engine.submit([Dispatch(job, 1)], slot)
    async with asyncio.timeout(TIMEOUT):
        async for event in stream:
            if isinstance(event, Progress):
                return job, slot.worker, stream
    raise AssertionError("the job ended before its first step")


async def rest(stream: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in stream]


async def run_again(engine: RedisEngine, job: GenerationRequest, attempt: int,
                    not_on: str) -> Done:
    """What the queue does with a lost job: the next attempt, here on the other worker."""
    slot = await slot_on(engine)
    assert slot.worker != not_on
    (stream,) = engine.submit([Dispatch(job, attempt)], slot)
    done = (await rest(stream))[-1]
    assert isinstance(done, Done), done
    return done


def finals(cluster: Cluster, job_id: str) -> list[tuple[int, str]]:
    """(attempt, type) of every Done and Failed the workers published for a job."""
    client = cluster.redis()
    try:
        entries = client.xrange(cluster.keys.events(job_id))
    finally:
        client.close()
    events = [parse_event(cast(dict[bytes, bytes], fields)) for _, fields in entries or []]
    return [(attempt, type(event).__name__) for attempt, event in events
            if not isinstance(event, Progress)]


def results_of(cluster: Cluster, job_id: str, attempt: int) -> list[bytes]:
    client = cluster.redis()
    try:
        return list(client.scan_iter(cluster.keys.result(f"{job_id}/{attempt}/*")))
    finally:
        client.close()


async def test_a_stopped_worker_loses_its_job_and_is_fenced_out_when_it_continues(
        cluster: Cluster, engine: RedisEngine):
    job, zombie, stream = await start_long(engine)
    cluster.workers[zombie].signal(signal.SIGSTOP)
    try:
        lost = (await rest(stream))[-1]
        assert isinstance(lost, Failed) and lost.kind == "lost", lost
        done = await run_again(engine, job, 2, not_on=zombie)
        assert done.images[0].path.exists()
    finally:
        cluster.workers[zombie].signal(signal.SIGCONT)
    # The zombie wakes up, finds its lease gone, stops, and publishes and keeps nothing of
    # attempt 1; then (its batch over) it offers a slot again.
    engine.release_slot(await slot_on(engine, zombie))
    assert finals(cluster, job.job_id) == [(2, "RemoteDone")]
    assert results_of(cluster, job.job_id, 1) == []


async def test_cancel_on_a_stopped_worker_ends_the_job_cancelled_at_reap(
        cluster: Cluster, engine: RedisEngine):
    job, worker, stream = await start_long(engine)
    cluster.workers[worker].signal(signal.SIGSTOP)
    try:
        assert await engine.cancel(job.job_id)
        end = (await rest(stream))[-1]
        assert isinstance(end, Failed) and end.kind == "cancelled", end
    finally:
        cluster.workers[worker].signal(signal.SIGCONT)
    await until(lambda: engine.catalogue().workers_online == 2)


async def test_a_blackholed_worker_loses_its_job_and_comes_back_when_healed(
        cluster: Cluster, engine: RedisEngine):
    job, cut_off, stream = await start_long(engine)
    cluster.proxies[cut_off].blackhole()
    try:
        lost = (await rest(stream))[-1]
        assert isinstance(lost, Failed) and lost.kind == "lost", lost
        await run_again(engine, job, 2, not_on=cut_off)
        # The cut-off worker cannot renew its lease: it stops the batch on its own.
        await asyncio.sleep(LEASE_SECONDS + 2 * HEARTBEAT_SECONDS)
    finally:
        cluster.proxies[cut_off].heal()
    # What it held back arrives late and is fenced out; it offers a slot again.
    engine.release_slot(await slot_on(engine, cut_off))
    assert finals(cluster, job.job_id) == [(2, "RemoteDone")]
    assert results_of(cluster, job.job_id, 1) == []


@pytest.mark.parametrize("empty", [False, True], ids=["aof", "empty"])
async def test_redis_killed_and_restarted_mid_job(cluster: Cluster, engine: RedisEngine,
                                                  empty: bool):
    job, _, stream = await start_long(engine)
    cluster.server.kill()
    await asyncio.sleep(HEARTBEAT_SECONDS)
    await asyncio.to_thread(cluster.server.restart, empty=empty)
    end = (await rest(stream))[-1]
    if empty:
        # Redis forgot the batch: the job is lost (and runs again); dispatch resumes.
        assert isinstance(end, Failed) and end.kind == "lost", end
        await run_again(engine, job, 2, not_on="")
    else:
        # Its append-only file kept the lease: nothing was lost, the job just finishes.
        assert isinstance(end, Done), end
        assert finals(cluster, job.job_id) == [(1, "RemoteDone")]
    await until(lambda: engine.catalogue().workers_online == 2)


async def test_a_sigkilled_worker_loses_its_job_and_it_runs_on_the_other(
        cluster: Cluster, engine: RedisEngine):
    job, worker, stream = await start_long(engine)
    cluster.workers[worker].signal(signal.SIGKILL)
    lost = (await rest(stream))[-1]
    assert isinstance(lost, Failed) and lost.kind == "lost", lost
    done = await run_again(engine, job, 2, not_on=worker)
    assert [image.path.parent.name for image in done.images] == [job.job_id]
    assert finals(cluster, job.job_id) == [(2, "RemoteDone")]
    await until(lambda: engine.catalogue().workers_online == 1)
