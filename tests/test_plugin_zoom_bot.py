"""/imagine, U1, then Zoom Out 2x and a pan, clicked through the Discord emulator with the real
bot and engine; the operation itself is checked against diffusers in tests/test_plugin_zoom.py.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.app import ImagineBot
from bot.jobs.models import Job, JobState
from engine.outputs import parse_parameters, read_parameters
from sandbox import DiscordEmulator, StoredMessage, User
from tests.support.bot import SharedEngine, running_bot, wait_for_job, wait_for_result

# Slow: a real engine worker and a bot.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SEED = 40
SIZE = 32  # the test model's native size; U1 makes 64x64
ZOOM_BUTTONS = ("out_2x", "out_1_5x", "left", "right", "up", "down")


async def click(emulator: DiscordEmulator, user: User, message: StoredMessage,
                custom_id: str) -> StoredMessage:
    record = await emulator.click(user, message.id, custom_id)
    return await wait_for_result(emulator, record)


async def finished(bot: ImagineBot, message: StoredMessage) -> Job:
    job_id = message.embeds[0]["footer"]["text"].split()[1]
    return await wait_for_job(bot, job_id, JobState.DELIVERED)


def size_of(message: StoredMessage) -> tuple[int, int]:
    (attachment,) = message.attachments
    return Image.open(io.BytesIO(attachment.data)).size


async def test_imagine_u1_zoom_out_then_pan(tmp_path, emulator: DiscordEmulator,
                                            shared_engine: SharedEngine):
    user = emulator.add_user(name="carol")
    # One credit per 32x32 image step, so a price shows the size and steps it paid for.
    async with running_bot(tmp_path, emulator, engine=shared_engine,
                           price_base_pixels=SIZE * SIZE, price_base_steps=1) as bot:
        record = await emulator.slash(user, "imagine", {
            "prompt": "a lighthouse", "steps": 2, "sampler": "euler", "seed": SEED})
        grid = await wait_for_result(emulator, record)
        original = await finished(bot, grid)
        assert not any(c.startswith("zoom:") for c in grid.custom_ids())  # not on grids

        single = await click(emulator, user, grid, f"upscale:u:{original.id}:0")
        upscaled = await finished(bot, single)
        buttons = [c for c in single.custom_ids() if c.startswith("zoom:")]
        assert buttons == [f"zoom:{key}:{upscaled.id}:0" for key in ZOOM_BUTTONS]

        zoomed_message = await click(emulator, user, single, f"zoom:out_2x:{upscaled.id}:0")
        zoomed = await finished(bot, zoomed_message)
        assert size_of(zoomed_message) == (2 * SIZE, 2 * SIZE)  # Zoom Out keeps the size
        assert (zoomed.kind, zoomed.parent_job_id) == ("zoom", upscaled.id)
        assert zoomed.request.params["box"] == [16, 16, 48, 48]
        assert zoomed.cost == 4 * 2  # a 64x64 image of 2 steps
        parameters = parse_parameters(read_parameters(zoomed.image_paths[0]) or "")
        assert parameters["Zoom out"] == "2"
        assert (parameters["width"], parameters["height"]) == (2 * SIZE, 2 * SIZE)
        assert parameters["Outpaint mask"] == "outside 32x32+16+16"
        assert parameters["Source image hash"] == zoomed.request.params["image_sha256"]
        # The same buttons again, and not the upscale or variation ones.
        again = [c for c in zoomed_message.custom_ids() if c.startswith("zoom:")]
        assert again == [f"zoom:{key}:{zoomed.id}:0" for key in ZOOM_BUTTONS]
        assert not any(c.startswith(("upscale:", "variations:"))
                       for c in zoomed_message.custom_ids())

        panned_message = await click(emulator, user, zoomed_message,
                                     f"zoom:right:{zoomed.id}:0")
        panned = await finished(bot, panned_message)
        assert size_of(panned_message) == (3 * SIZE, 2 * SIZE)  # half the width added
        assert panned.request.params["box"] == [0, 0, 2 * SIZE, 2 * SIZE]
        assert f"zoom:right:{panned.id}:0" in panned_message.custom_ids()
        assert await bot.ledger.pending_holds(user.id) == 0
        assert await bot.ledger.audit() == []
