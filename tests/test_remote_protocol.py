"""The remote engine's wire against a real redis-server: the Lua scripts that fence leases, and
the versioned JSON messages (never pickle)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from engine.dispatch import ModelEntry
from engine.events import Failed, Progress
from engine.remote.connection import add, text
from engine.remote.protocol import (
    FINISH,
    JOBS_GROUP,
    REAPER,
    RELEASE,
    RENEW,
    BatchJob,
    Keys,
    Offer,
    ProtocolError,
    Registration,
    RemoteDone,
    RemoteImage,
    batch_json,
    event_fields,
    parse_batch,
    parse_event,
    result_ref,
)
from engine.request import GenerationRequest

KEYS = Keys("test")
STREAM = KEYS.jobs("w1")


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def lease(redis: Redis, consumer: str) -> str:
    """A batch in w1's stream, read (so leased) by ``consumer``."""
    await redis.xgroup_create(STREAM, JOBS_GROUP, id="0", mkstream=True)
    entry_id = text(await add(redis, STREAM, {"m": b"{}"}))
    await redis.xreadgroup(JOBS_GROUP, consumer, {STREAM: ">"}, count=1)
    return entry_id


@pytest.mark.asyncio
async def test_renewal_keeps_the_owners_lease_and_fences_a_zombie(redis):
    renew, finish, release = (redis.register_script(s) for s in (RENEW, FINISH, RELEASE))
    entry_id = await lease(redis, "w1")
    args = [JOBS_GROUP, "w1", entry_id]
    assert await renew(keys=[STREAM], args=args) == 1
    assert await renew(keys=[STREAM], args=[JOBS_GROUP, "w2", entry_id]) == 0

    # The reaper takes the expired lease while w1 is stopped; w1 comes back as a zombie.
    claimed = await redis.xautoclaim(STREAM, JOBS_GROUP, REAPER, 0, start_id="0-0")
    assert [entry for entry, _ in claimed[1]] == [entry_id.encode()]
    assert await renew(keys=[STREAM], args=args) == 0
    pending = await redis.xpending_range(STREAM, JOBS_GROUP, min="-", max="+", count=10)
    assert [p["consumer"] for p in pending] == [REAPER.encode()]  # not taken back

    events = KEYS.events("job1")
    assert await finish(keys=[STREAM, events], args=[*args, 64, 60, b"{}"]) == 0
    assert await redis.exists(events) == 0  # the zombie's result is never published
    assert await release(keys=[STREAM], args=args) == 0
    assert await redis.xlen(STREAM) == 1


@pytest.mark.asyncio
async def test_the_owner_publishes_and_releases_and_then_nothing_is_left(redis):
    finish, release = redis.register_script(FINISH), redis.register_script(RELEASE)
    entry_id = await lease(redis, "w1")
    events = KEYS.events("job1")
    assert await finish(keys=[STREAM, events], args=[JOBS_GROUP, "w1", entry_id, 64, 60,
                                                      b"final"]) == 1
    assert [fields for _, fields in await redis.xrange(events)] == [{b"m": b"final"}]
    assert 0 < await redis.ttl(events) <= 60
    assert await release(keys=[STREAM], args=[JOBS_GROUP, "w1", entry_id]) == 1
    assert await redis.xlen(STREAM) == 0
    assert await redis.xpending(STREAM, JOBS_GROUP) == {
        "pending": 0, "min": None, "max": None, "consumers": []}


@pytest.mark.asyncio
async def test_a_lease_forgotten_by_redis_is_no_ones(redis):
    renew = redis.register_script(RENEW)
    entry_id = await lease(redis, "w1")
    await redis.flushdb()
    assert await renew(keys=[STREAM], args=[JOBS_GROUP, "w1", entry_id]) == 0


def test_messages_round_trip_as_versioned_json() -> None:
    request = GenerationRequest(job_id="j1", prompt="a cat", model="demo", steps=3, seed=5)
    data = batch_json([BatchJob(request, 2)])
    assert json.loads(data)["v"] == 1
    assert parse_batch(data) == [BatchJob(request, 2)]

    offer = Offer("w1", 3, ["demo"], ["demo"], ["txt2img"], 4, 1024 * 1024)
    assert Offer.from_json(offer.to_json()) == offer
    slot = offer.slot()
    assert slot.worker == "w1" and slot.can_run(request.model_copy(update={"width": 64,
                                                                           "height": 64}))
    entry = ModelEntry("demo", "sd15", 512, 512, 25, 7.0, "euler", {"display": "demo"})
    registration = Registration("w1", {"demo": entry}, ["txt2img"], 4, 1024, {"protocol": "1"})
    assert Registration.from_json(registration.to_json()) == registration

    done = RemoteDone("j1", "redis", [RemoteImage(result_ref("j1", 2, "0.png"), 5, 64, 64)],
                      None, 1.5, {"model": "demo"})
    for event in (Progress("j1", 1, 3, b"\x89PNG"), Progress("j1", 2, 3), done,
                  Failed("j1", "cancelled", "cancelled")):
        fields = {key.encode(): value for key, value in event_fields(2, event).items()}
        assert parse_event(fields) == (2, event)


@pytest.mark.parametrize("data", [
    b"\x80\x04K\x01.",  # a pickle is not even read
    b'{"v": 2, "type": "batch", "jobs": []}',
    b'{"v": 1, "type": "offer", "jobs": []}',
    b'{"v": 1, "type": "batch", "jobs": [{"attempt": 1}]}',
])
def test_other_versions_and_shapes_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_batch(data)


@pytest.mark.parametrize("ref", ["j2/1/0.png", "j1/2/0.png", "j1/1/../../etc/passwd",
                                 "j1/1/0.txt", "/etc/passwd"])
def test_a_done_may_name_only_files_of_its_own_attempt(ref: str) -> None:
    done = RemoteDone("j1", "redis", [RemoteImage(ref, 5, 64, 64)], None, 1.0, {})
    fields = {key.encode(): value for key, value in event_fields(1, done).items()}
    with pytest.raises(ProtocolError):
        parse_event(fields)
