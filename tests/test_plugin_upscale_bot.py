"""U1–U4 and "Upscale (2x)" clicked through the Discord emulator, with the real bot and engine.

The shared engine has no upscaler model configured, so these upscales take the diffusion
model's hires-fix path (the spandrel path is tested in tests/test_plugin_upscale.py).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.app import ImagineBot
from bot.jobs.models import Job, JobState
from sandbox import DiscordEmulator, StoredMessage, User
from tests.support.bot import (
    SharedEngine,
    running_bot,
    wait_for_job,
    wait_for_result,
)

# Slow: a real engine worker and a bot per test.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SEED = 40
SIZE = 32  # the test model's native size


async def imagine(emulator: DiscordEmulator, user: User, **options: Any) -> StoredMessage:
    record = await emulator.slash(user, "imagine", {
        "prompt": "a lighthouse", "steps": 2, "sampler": "euler", "seed": SEED, **options})
    return await wait_for_result(emulator, record)


async def finished(bot: ImagineBot, message: StoredMessage) -> Job:
    job_id = message.embeds[0]["footer"]["text"].split()[1]
    return await wait_for_job(bot, job_id, JobState.DELIVERED)


async def upscale(emulator: DiscordEmulator, user: User, message: StoredMessage,
                  custom_id: str) -> StoredMessage:
    record = await emulator.click(user, message.id, custom_id)
    return await wait_for_result(emulator, record)


def image_of(message: StoredMessage) -> Image.Image:
    (attachment,) = message.attachments
    return Image.open(io.BytesIO(attachment.data)).convert("RGB")


async def test_u2_then_upscale_again_up_to_the_largest_size(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine, monkeypatch):
    user = emulator.add_user(name="alice")
    # Upscales may reach the plugin's max_pixels: 32 -> 64 -> 128 pixels wide, and no further.
    monkeypatch.setenv("IMAGINEBOT_UPSCALE_MAX_PIXELS", str(128 * 128))
    # One credit per 32x32 image step, so a price shows which size and steps it paid for.
    async with running_bot(tmp_path, emulator, engine=shared_engine,
                           price_base_pixels=SIZE * SIZE, price_base_steps=1) as bot:
        grid = await imagine(emulator, user)
        original = await finished(bot, grid)
        assert [c for c in grid.custom_ids() if c.startswith("upscale:")] == [
            f"upscale:u:{original.id}:{i}" for i in range(4)]
        before = await bot.ledger.balance(user.id)

        double = await upscale(emulator, user, grid, f"upscale:u:{original.id}:1")
        assert image_of(double).size == (2 * SIZE, 2 * SIZE)
        job = await finished(bot, double)
        assert job.kind == "upscale" and job.parent_job_id == original.id
        assert job.request.seed == SEED + 1 and job.request.count == 1
        assert job.request_key == f"upscale:{double.interaction_id}"
        fields = {field["name"]: field["value"] for field in double.embeds[0]["fields"]}
        assert fields["Seed"] == str(SEED + 1)

        quadruple = await upscale(emulator, user, double, f"upscale:again:{job.id}:0")
        assert image_of(quadruple).size == (4 * SIZE, 4 * SIZE)
        last = await finished(bot, quadruple)
        spent = job.cost + last.cost
        # Priced by what they make: a 64x64 and a 128x128 hires-fix pass of one step each
        # (2 steps at strength 0.35 run 1), not by the 32x32 source of two steps (2 credits).
        assert (original.cost, job.cost, last.cost) == (4 * 2, 4, 16)
        assert await bot.ledger.balance(user.id) == before - spent
        # At the largest size the button is gone; old messages' clicks are refused (unit test).
        assert f"upscale:again:{last.id}:0" not in quadruple.custom_ids()
        assert f"variations:subtle:{last.id}:0" in quadruple.custom_ids()
        assert await bot.ledger.pending_holds(user.id) == 0
        assert await bot.ledger.audit() == []


async def test_upscale_after_a_restart_remakes_a_deleted_source(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    user = emulator.add_user(name="bob")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        grid = await imagine(emulator, user)
        original = await finished(bot, grid)
        first = await upscale(emulator, user, grid, f"upscale:u:{original.id}:2")
        upscaled = await finished(bot, first)

    for path in (*original.image_paths, *upscaled.image_paths):
        path.unlink()
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        again = await upscale(emulator, user, grid, f"upscale:u:{original.id}:2")
        remade = np.asarray(image_of(again), dtype=np.float64)
        # The same image up to rounding (a grid's images and single ones may differ by one
        # level in a few pixels); a different image is tens of levels away on average.
        assert np.abs(remade - np.asarray(image_of(first), dtype=np.float64)).mean() < 0.5
        larger = await upscale(emulator, user, first, f"upscale:again:{upscaled.id}:0")
        assert image_of(larger).size == (4 * SIZE, 4 * SIZE)
        assert await bot.ledger.audit() == []
