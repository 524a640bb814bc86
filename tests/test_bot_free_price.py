"""``IMAGINEBOT_PRICE_PER_IMAGE=0``, end to end: a free job holds nothing, and every way it can
end (delivered, cancelled while running) skips the ledger, instead of failing every generation
with a hold of 0 that the ledger refuses.

The real bot, ledger and engine worker (tiny model) against sandbox; one engine worker
serves the module (tests/support/bot.py).
"""

from __future__ import annotations

import pytest

from bot.app import ImagineBot
from bot.jobs.models import Job, JobState
from sandbox import DiscordEmulator, User
from tests.support.bot import (
    SharedEngine,
    running_bot,
    wait_for_job,
    wait_for_result,
    wait_for_text,
)
from tests.test_bot_imagine import imagine, job_id_of

# Slow: a real engine worker and a bot per test.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def assert_free(bot: ImagineBot, user: User, before: int, *jobs: Job) -> None:
    """Nothing held, captured or released: the statement has the grants and nothing else."""
    for job in jobs:
        assert (job.cost, job.hold_id, job.delivered_free) == (0, None, False)
    assert await bot.ledger.balance(user.id) == before
    assert await bot.ledger.pending_holds(user.id) == 0
    assert {entry.kind for entry in await bot.ledger.history(user.id)} <= {"signup", "daily"}
    assert bot.jobs.uncharged_deliveries == 0
    assert await bot.ledger.audit() == []


async def test_a_free_image_and_a_free_variation_are_delivered_without_a_hold(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine, price_per_image=0) as bot:
        user = emulator.add_user(name="frida")
        before = await bot.ledger.touch(user.id)
        record = await imagine(emulator, user, steps=2, seed=5)
        grid = await wait_for_result(emulator, record)
        original = await wait_for_job(bot, grid.embeds[0]["footer"]["text"].split()[1],
                                      JobState.DELIVERED)
        assert any("costs 0 credits" in revision.content for revision in grid.history)

        click = await emulator.click(user, grid.id, f"variations:v:{original.id}:0")
        varied_message = await wait_for_result(emulator, click)
        varied = await wait_for_job(bot, varied_message.embeds[0]["footer"]["text"].split()[1],
                                    JobState.DELIVERED)
        await assert_free(bot, user, before, original, varied)


async def test_a_free_job_cancelled_while_running_releases_nothing(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine, price_per_image=0) as bot:
        user = emulator.add_user(name="gus")
        before = await bot.ledger.touch(user.id)
        record = await imagine(emulator, user, steps=100)
        job_id = job_id_of(await wait_for_text(emulator, record, "Generating"))
        assert await bot.jobs.cancel(job_id, user.id)
        job = await wait_for_job(bot, job_id, JobState.CANCELLED)
        await assert_free(bot, user, before, job)
