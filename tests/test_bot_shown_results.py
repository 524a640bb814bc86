"""What results show, with the real engine: a prompt at a raised length limit, and an upscale.

The emulator refuses embeds over Discord's limits (sandbox/limits.py), so a delivered
result is one that Discord would take. tests/test_bot_shown.py covers the rest without a worker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bot.app import ImagineBot
from bot.jobs.models import Job, JobState
from engine.families import model_info
from engine.outputs import read_parameters
from sandbox import DiscordEmulator, StoredMessage, User
from tests.support.bot import SharedEngine, running_bot, wait_for_job, wait_for_result

# Slow: a real engine worker.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LONG = 5000


async def result(emulator: DiscordEmulator, bot: ImagineBot, user: User,
                 **options: object) -> tuple[StoredMessage, Job]:
    record = await emulator.slash(user, "imagine", {"steps": 2, **options})
    message = await wait_for_result(emulator, record)
    job_id = message.embeds[0]["footer"]["text"].split()[1]
    return message, await wait_for_job(bot, job_id, JobState.DELIVERED)


async def test_a_prompt_at_a_raised_length_limit_is_delivered_in_full_in_the_png(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    prompt = " ".join(f"word{n}" for n in range(LONG))[:LONG]
    async with running_bot(tmp_path, emulator, engine=shared_engine,
                           max_prompt_length=LONG) as bot:
        user = emulator.add_user(name="lena")
        before = await bot.ledger.touch(user.id)
        message, job = await result(emulator, bot, user, prompt=prompt, negative=prompt)
        embed = message.embeds[0]
        assert embed["description"].endswith("…") and prompt.startswith(
            embed["description"][:-1])
        # CLIP reads a long prompt whole, in 75-token chunks as AUTOMATIC1111 does: no warning
        assert "tokens long" not in embed["footer"]["text"]
        assert (read_parameters(job.image_paths[0]) or "").startswith(prompt + "\n")
        assert await bot.ledger.balance(user.id) == before - job.cost
        assert await bot.ledger.audit() == []


async def test_an_upscale_shows_the_model_by_name_never_by_path(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine, test_model: Path):
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        user = emulator.add_user(name="uma")
        grid, job = await result(emulator, bot, user, prompt="a lighthouse")
        click = await emulator.click(user, grid.id, f"upscale:u:{job.id}:0")
        upscaled = await wait_for_result(emulator, click)
        upscale = await wait_for_job(bot, upscaled.embeds[0]["footer"]["text"].split()[1],
                                     JobState.DELIVERED)
        name = model_info(str(test_model), shared_engine.settings).name
        assert {f["name"]: f["value"] for f in upscaled.embeds[0]["fields"]}["Model"] == name
        parameters = read_parameters(upscale.image_paths[0]) or ""
        assert re.findall(r"Model: ([^,\n]*)", parameters) == [name]
        paths = (str(test_model), str(shared_engine.settings.output_dir))
        for shown in (json.dumps(upscaled.embeds), parameters):
            assert not any(path in shown for path in paths)
