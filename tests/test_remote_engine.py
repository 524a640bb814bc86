"""RedisEngine (the bot's side) against a real redis-server, with a scripted worker made of the
protocol's own messages and scripts: fast, and every step of a worker under the test's control.
The real worker process is in test_remote_worker.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from engine.dispatch import Dispatch, ModelEntry
from engine.errors import RequestError
from engine.events import Done, EngineEvent, Failed, Progress, Queued
from engine.remote.connection import add, read_group
from engine.remote.engine import RedisEngine
from engine.remote.protocol import (
    EVENTS_MAXLEN,
    FINISH,
    JOBS_GROUP,
    RENEW,
    BatchJob,
    Keys,
    Offer,
    Registration,
    RemoteDone,
    RemoteEvent,
    RemoteImage,
    event_fields,
    model_entry_json,
    parse_batch,
    result_ref,
)
from engine.remote.results import result_store
from engine.request import GenerationRequest
from engine.settings import EngineSettings

pytestmark = pytest.mark.asyncio

TIMEOUT = 10
ENTRY = ModelEntry("remote-model", "sd15", 512, 512, 20, 6.5, "euler", {"display": "remote"})


class ScriptedWorker:
    """A worker played by the test: it registers, offers, takes and answers when told."""

    def __init__(self, redis: Redis, keys: Keys, name: str = "w1") -> None:
        self.redis, self.keys, self.name = redis, keys, name
        self.stream = keys.jobs(name)
        self.offers = 0
        self._finish = redis.register_script(FINISH)
        self._renew = redis.register_script(RENEW)

    async def register(self) -> None:
        registration = Registration(self.name, {ENTRY.name: ENTRY}, ["txt2img"], 4, 1024 * 1024)
        await self.redis.hset(self.keys.workers, self.name, registration.to_json())
        await self.redis.hset(self.keys.models, ENTRY.name, model_entry_json(ENTRY))
        await self.redis.sadd(self.keys.operations, "txt2img")
        await self.redis.set(self.keys.heartbeat(self.name), 1, ex=30)
        await self.redis.xgroup_create(self.stream, JOBS_GROUP, id="0", mkstream=True)

    async def offer(self) -> None:
        self.offers += 1
        offer = Offer(self.name, self.offers, [ENTRY.name], [], ["txt2img"], 4, 1024 * 1024)
        await self.redis.xadd(self.keys.ready, {"m": offer.to_json()})

    async def take(self) -> tuple[str, list[BatchJob]]:
        async with asyncio.timeout(TIMEOUT):
            while not (entries := await read_group(self.redis, JOBS_GROUP, self.name,
                                                   self.stream, count=1, block=100)):
                pass
        entry_id, fields = entries[0]
        return entry_id.decode(), parse_batch(fields[b"m"])

    async def progress(self, attempt: int, event: Progress) -> None:
        await add(self.redis, self.keys.events(event.job_id), event_fields(attempt, event))

    async def finish(self, entry_id: str, attempt: int, event: RemoteEvent) -> int:
        return int(await self._finish(
            keys=[self.stream, self.keys.events(event.job_id)],
            args=[JOBS_GROUP, self.name, entry_id, EVENTS_MAXLEN, 60,
                  event_fields(attempt, event)["m"]]))

    async def renew(self, entry_id: str) -> int:
        return int(await self._renew(keys=[self.stream], args=[JOBS_GROUP, self.name, entry_id]))


@pytest.fixture
def settings(tmp_path: Path) -> EngineSettings:
    return EngineSettings(output_dir=tmp_path / "out", lease_seconds=1.0, heartbeat_seconds=0.1,
                          redis_prefix="t")


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def worker(redis: Redis, settings: EngineSettings) -> ScriptedWorker:
    worker = ScriptedWorker(redis, Keys(settings.redis_prefix))
    await worker.register()
    return worker


@pytest_asyncio.fixture
async def engine(settings: EngineSettings, redis_url: str,
                 worker: ScriptedWorker) -> AsyncIterator[RedisEngine]:
    """Started after the worker registered: it knows the worker's models from the start."""
    engine = RedisEngine(settings, redis_url)
    await engine.start()
    yield engine
    await engine.close()


def job(job_id: str = "j1", **fields: object) -> GenerationRequest:
    return GenerationRequest(job_id=job_id, prompt="a cat", model=ENTRY.name, count=1, seed=7,
                             **fields)


async def events_of(stream: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in stream]


@pytest.mark.parametrize("store", ["redis", "file"])
async def test_acquire_waits_for_an_offer_and_a_done_brings_the_images_home(
        store, redis, redis_url, settings, worker, tmp_path):
    if store == "file":
        settings = settings.model_copy(update={"result_store": f"file://{tmp_path}/shared"})
    engine = RedisEngine(settings, redis_url)
    await engine.start()
    try:
        await _round_trip(engine, worker, redis, settings)
    finally:
        await engine.close()
    assert not list((tmp_path / "shared").rglob("*.png"))  # picked up, then deleted


async def _round_trip(engine: RedisEngine, worker: ScriptedWorker, redis: Redis,
                      settings: EngineSettings) -> None:
    acquire = asyncio.create_task(engine.acquire_slot())
    await asyncio.sleep(0.5)
    assert not acquire.done()  # no worker offered a slot yet
    await worker.offer()
    async with asyncio.timeout(TIMEOUT):
        slot = await acquire
    assert slot.worker == "w1" and ENTRY.name in slot.models

    request = engine.validate(job())
    assert (request.steps, request.cfg, request.width) == (20, 6.5, 512)  # the entry's defaults
    (stream,) = engine.submit([Dispatch(request, 2)], slot)
    entry_id, batch = await worker.take()
    assert batch == [BatchJob(request, 2)]

    await worker.progress(1, Progress("j1", 9, 9))  # an earlier attempt's: ignored
    await worker.progress(2, Progress("j1", 1, 2, b"preview"))
    ref = result_ref("j1", 2, "0.png")
    store = result_store(settings.result_store, redis, Keys("t"))
    await store.put(ref, b"png bytes")
    done = RemoteDone("j1", store.kind, [RemoteImage(ref, 7, 512, 512)], None, 1.25,
                      {"model": "remote"})
    assert await worker.finish(entry_id, 2, done) == 1

    events = await events_of(stream)
    assert events[:2] == [Queued("j1", 0), Progress("j1", 1, 2, b"preview")]
    final = events[-1]
    assert isinstance(final, Done) and len(events) == 3
    path = settings.output_dir.resolve() / "j1" / "0.png"
    assert [image.path for image in final.images] == [path]
    assert path.read_bytes() == b"png bytes"
    assert (final.seconds, final.metadata) == (1.25, {"model": "remote"})
    assert await store.get(ref) is None  # picked up, then deleted


async def test_an_expired_lease_is_lost_and_the_zombie_is_fenced(engine, worker):
    await worker.offer()
    async with asyncio.timeout(TIMEOUT):
        slot = await engine.acquire_slot()
    (stream,) = engine.submit([Dispatch(engine.validate(job()), 1)], slot)
    entry_id, _ = await worker.take()
    assert await worker.renew(entry_id) == 1  # the worker "stops" here: no more renewals

    events = await events_of(stream)
    assert isinstance(events[-1], Failed) and events[-1].kind == "lost"
    assert await worker.renew(entry_id) == 0
    assert await worker.finish(entry_id, 1, Failed("j1", "late", "error")) == 0


async def test_cancel_flags_the_job_and_a_dead_workers_batch_ends_cancelled(
        engine, worker, redis):
    await worker.offer()
    async with asyncio.timeout(TIMEOUT):
        slot = await engine.acquire_slot()
    pubsub = redis.pubsub()
    await pubsub.subscribe(Keys("t").cancels)
    (stream,) = engine.submit([Dispatch(engine.validate(job()), 1)], slot)
    assert await engine.cancel("j1")
    assert not await engine.cancel("unknown")
    async with asyncio.timeout(TIMEOUT):
        while (message := await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=1)) is None:
            pass
    assert message["data"] == b"j1"
    assert await redis.exists(Keys("t").cancel("j1")) == 1
    await pubsub.aclose()

    await redis.delete(Keys("t").heartbeat("w1"))  # the worker died before reading its batch
    events = await events_of(stream)
    assert events[-1] == Failed("j1", "cancelled", "cancelled")
    assert await redis.xlen(worker.stream) == 0  # drained


async def test_an_offer_from_a_busy_worker_is_not_a_slot(engine, worker):
    await worker.offer()
    async with asyncio.timeout(TIMEOUT):
        slot = await engine.acquire_slot()
    (stream,) = engine.submit([Dispatch(engine.validate(job()), 1)], slot)
    entry_id, _ = await worker.take()
    await worker.offer()  # sent before it saw the batch
    acquire = asyncio.create_task(engine.acquire_slot())
    await asyncio.sleep(0.5)
    assert not acquire.done()
    assert await worker.finish(entry_id, 1, Failed("j1", "boom", "error")) == 1
    assert (await events_of(stream))[-1] == Failed("j1", "boom", "error")
    await worker.redis.xack(worker.stream, JOBS_GROUP, entry_id)
    await worker.offer()
    async with asyncio.timeout(TIMEOUT):
        assert (await acquire).worker == "w1"


async def test_redis_forgetting_everything_loses_the_job_and_dispatch_resumes(
        engine, worker, redis):
    await worker.offer()
    async with asyncio.timeout(TIMEOUT):
        slot = await engine.acquire_slot()
    (stream,) = engine.submit([Dispatch(engine.validate(job()), 1)], slot)
    await worker.take()
    await redis.flushall()
    events = await events_of(stream)
    assert isinstance(events[-1], Failed) and events[-1].kind == "lost"

    await worker.register()
    await worker.offer()
    async with asyncio.timeout(TIMEOUT):
        slot = await engine.acquire_slot()
    engine.submit([Dispatch(engine.validate(job("j2")), 1)], slot)
    _, batch = await worker.take()
    assert batch[0].request.job_id == "j2"


async def test_validation_uses_the_bots_files_then_the_remembered_catalogue(engine, worker):
    local = engine.validate(GenerationRequest(prompt="a cat", count=1))
    assert local.model == "demo"  # named as bot and workers list it, not by a path
    with pytest.raises(RequestError) as error:
        engine.validate(GenerationRequest(prompt="a cat", model="nobody-has-it"))
    assert error.value.field == "model"
    assert (engine.validate(job())).model == ENTRY.name
    catalogue = engine.catalogue()
    assert catalogue.workers_online == 1 and "txt2img" in catalogue.operations


async def test_redis_going_away_pauses_dispatch_and_loses_nothing(redis_server, settings):
    redis = Redis.from_url(redis_server.url)
    worker = ScriptedWorker(redis, Keys("t"))
    await worker.register()
    engine = RedisEngine(settings.model_copy(update={"lease_seconds": 30}), redis_server.url)
    await engine.start()
    try:
        await worker.offer()
        async with asyncio.timeout(TIMEOUT):
            slot = await engine.acquire_slot()
        (stream,) = engine.submit([Dispatch(engine.validate(job()), 1)], slot)
        entry_id, _ = await worker.take()

        redis_server.kill()
        await asyncio.sleep(0.5)
        acquire = asyncio.create_task(engine.acquire_slot())
        await asyncio.sleep(0.5)
        assert not acquire.done()
        redis_server.restart()  # with its append-only file: the batch and its lease survive
        await redis.aclose()
        redis = Redis.from_url(redis_server.url)
        worker = ScriptedWorker(redis, Keys("t"))
        assert await worker.finish(entry_id, 1, Failed("j1", "boom", "error")) == 1
        assert (await events_of(stream))[-1] == Failed("j1", "boom", "error")

        await redis.xack(worker.stream, JOBS_GROUP, entry_id)
        await worker.offer()
        async with asyncio.timeout(TIMEOUT):
            assert (await acquire).worker == "w1"
    finally:
        async with asyncio.timeout(TIMEOUT):
            await engine.close()
        await redis.aclose()
