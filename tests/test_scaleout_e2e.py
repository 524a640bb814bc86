"""docs/scaleout.md's walkthrough, end to end: one bot and two ``imaginebot worker`` processes
on one machine, meeting in one Redis, with the real bot on the Discord emulator.

A member's /imagine before any worker is online is held and waits (and the member is told);
it runs once the workers start; a queued job is cancelled in the bot and refunded. A job whose
worker is SIGKILLed mid-job runs again on the other worker: one result message, one capture.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest
import redis

from bot.jobs.models import JobState
from engine.remote.protocol import JOBS_GROUP, Keys
from sandbox import DiscordEmulator, StoredMessage
from tests.support.bot import running_bot, wait_for_job, wait_for_result, wait_for_text
from tests.support.redis import shared_redis_url
from tests.support.workers import HEARTBEAT_SECONDS, LEASE_SECONDS, WorkerProcess
from tests.test_bot_imagine import START_CREDITS, assert_untouched, imagine, job_id_of

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

#: Cost of a 4-image request of the tiny model (the price's floor).
COST = 4


def job_of(message: StoredMessage) -> str:
    """The job id in a result embed's footer."""
    return str(message.embeds[0]["footer"]["text"].split()[1])


def holder(url: str, keys: Keys, workers: list[str]) -> str | None:
    """The worker whose stream holds a batch under lease now, if any."""
    client = redis.Redis.from_url(url)
    try:
        for worker in workers:
            if client.exists(keys.jobs(worker)) and client.xpending(
                    keys.jobs(worker), JOBS_GROUP)["pending"]:
                return worker
        return None
    finally:
        client.close()


async def test_one_bot_and_two_workers_on_one_machine(
        tmp_path: Path, emulator: DiscordEmulator, test_model: Path,
        monkeypatch: pytest.MonkeyPatch):
    url, prefix = shared_redis_url(), f"e2e-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("IMAGINEBOT_ENGINE", url)  # as the walkthrough's bot reads it
    workers = [WorkerProcess(url, name, test_model, tmp_path / f"{name}.log", prefix=prefix)
               for name in ("gpu0", "gpu1")]
    try:
        async with running_bot(tmp_path, emulator, model=test_model, redis_prefix=prefix,
                               lease_seconds=LEASE_SECONDS,
                               heartbeat_seconds=HEARTBEAT_SECONDS, max_steps=500) as bot:
            assert bot.settings.engine == url
            alice = emulator.add_user(name="alice")
            early = await imagine(emulator, alice, "a red cat", seed=1)
            await wait_for_text(emulator, early, "No image generator is online yet")
            assert await bot.ledger.pending_holds(alice.id) == COST  # held while it waits
            # A queued job is cancelled in the bot, as with a local engine: refunded.
            bob = emulator.add_user(name="bob")
            before = await bot.ledger.touch(bob.id)
            queued = await imagine(emulator, bob, "a blue bird")
            message = await wait_for_text(emulator, queued, "Queued")
            await emulator.click(bob, message.id, f"core:cancel:{job_id_of(message)}")
            await wait_for_text(emulator, queued, "🚫 Cancelled")
            await assert_untouched(bot, bob, before)

            for worker in workers:
                worker.start()
            message = await wait_for_result(emulator, early, timeout=180)
            assert [a.filename for a in message.attachments] == ["grid.png"]
            assert message.attachments[0].data.startswith(b"\x89PNG")
            await wait_for_job(bot, job_of(message), JobState.DELIVERED)
            assert await bot.ledger.balance(alice.id) == START_CREDITS - COST

            # A worker dies mid-job: the job runs again on the other; one result, one charge.
            record = await imagine(emulator, alice, "a green dog", seed=2, steps=400)
            await wait_for_text(emulator, record, "step")
            names = [worker.name for worker in workers]
            victim = await asyncio.to_thread(holder, url, Keys(prefix), names)
            assert victim is not None
            workers[names.index(victim)].signal(signal.SIGKILL)
            message = await wait_for_result(emulator, record, timeout=180)
            job = await wait_for_job(bot, job_of(message), JobState.DELIVERED)
            assert job.attempts == 2
            results = [m for m in emulator.messages_of(record) if m.embeds and m.attachments]
            assert len(results) == 1
            assert await bot.ledger.balance(alice.id) == START_CREDITS - 2 * COST
            assert await bot.ledger.pending_holds(alice.id) == 0
            assert await bot.ledger.audit() == []
    finally:
        for worker in workers:
            worker.close()
