"""V1–V4, 🔄, Vary (Subtle)/(Strong) and 🎨 Remix, clicked through the Discord emulator.

The real bot, ledger and engine worker (tiny model, 2 euler steps) against sandbox; one
engine worker serves the module (tests/support/bot.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.app import ImagineBot
from bot.jobs.models import Job, JobState
from engine.request import Variation
from sandbox import DiscordEmulator, InteractionRecord, StoredMessage, User
from tests.support.bot import (
    SharedEngine,
    running_bot,
    wait_for_job,
    wait_for_result,
    wait_for_text,
)

# Slow: a real engine worker and a bot per test.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SEED = 100


async def imagine(emulator: DiscordEmulator, user: User, **options: Any) -> StoredMessage:
    record = await emulator.slash(user, "imagine", {
        "prompt": "a red cat", "steps": 2, "sampler": "euler", "seed": SEED, **options})
    return await wait_for_result(emulator, record)


def job_id(message: StoredMessage) -> str:
    return str(message.embeds[0]["footer"]["text"].split()[1])


async def finished(bot: ImagineBot, message: StoredMessage) -> Job:
    return await wait_for_job(bot, job_id(message), JobState.DELIVERED)


async def click(emulator: DiscordEmulator, user: User, message: StoredMessage,
                custom_id: str) -> InteractionRecord:
    return await emulator.click(user, message.id, custom_id)


def labels(message: StoredMessage) -> list[list[str]]:
    return [[button.get("label") or button["emoji"]["name"] for button in row["components"]]
            for row in message.components]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def distance(a: Path, b: Path) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


async def test_grid_buttons_v3_and_reroll_after_a_restart(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    user = emulator.add_user(name="alice")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        grid = await imagine(emulator, user)
        original = await finished(bot, grid)
        assert labels(grid)[:2] == [["U1", "U2", "U3", "U4", "🔄"],
                                    ["V1", "V2", "V3", "V4", "Remix"]]
        remix_button = grid.component(f"variations:remix:{original.id}:0")
        assert remix_button is not None and remix_button["emoji"]["name"] == "🎨"

    # A new bot on the same database: the buttons of the old message still work.
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        before = await bot.ledger.balance(user.id)
        vary = await click(emulator, user, grid, f"variations:v:{original.id}:2")
        varied_message = await wait_for_result(emulator, vary)
        varied = await finished(bot, varied_message)
        reroll = await click(emulator, user, grid, f"variations:reroll:{original.id}:0")
        rerolled_message = await wait_for_result(emulator, reroll)
        rerolled = await finished(bot, rerolled_message)

        request = varied.request
        assert request.seed == SEED + 2 and request.prompt == "a red cat"
        assert request.variation_seed is not None and request.variation_strength == 0.25
        assert varied.kind == "imagine" and varied.parent_job_id == original.id
        assert varied.request_key == f"vary:{vary.id}"
        assert rerolled.request.seed != SEED and rerolled.request.variation_seed is None
        assert rerolled.request_key == f"reroll:{reroll.id}"
        seed_field = rerolled_message.embeds[0]["fields"][0]
        assert seed_field["name"] == "Seed" and not seed_field["value"].startswith(str(SEED))

        image3 = original.image_paths[2]
        near = [distance(image3, path) for path in varied.image_paths]
        far = [distance(image3, path) for path in rerolled.image_paths]
        assert len(near) == len(far) == 4
        assert max(near) < min(far), (near, far)

        # V2 on the variation grid varies its image 2, not the original image 3 again.
        deeper_click = await click(emulator, user, varied_message, f"variations:v:{varied.id}:1")
        deeper = await finished(bot, await wait_for_result(emulator, deeper_click))
        assert deeper.request.seed == SEED + 2 and deeper.parent_job_id == varied.id
        assert request.variation_seed is not None
        assert deeper.request.earlier_variations == (
            Variation(seed=request.variation_seed + 1, strength=0.25),)
        assert deeper.request.variation_seed not in (None, request.variation_seed)

        spent = varied.cost + rerolled.cost + deeper.cost
        assert await bot.ledger.balance(user.id) == before - spent
        assert await bot.ledger.pending_holds(user.id) == 0
        assert await bot.ledger.audit() == []

        remix = await click(emulator, user, grid, f"variations:remix:{original.id}:0")
        assert await remix.wait_for_response() == 9  # the form opens on the old message too


async def test_vary_subtle_and_strong_on_an_upscaled_image(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    user = emulator.add_user(name="bob")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        grid = await imagine(emulator, user)
        original = await finished(bot, grid)
        upscale = await click(emulator, user, grid, f"upscale:u:{original.id}:1")
        single = await wait_for_result(emulator, upscale)
        upscaled = await finished(bot, single)
        assert labels(single)[:2] == [["Vary (Subtle)", "Vary (Strong)", "Upscale (2x)"],
                                      ["Remix"]]

        results = {}
        for key, strength in (("subtle", 0.25), ("strong", 0.6)):
            record = await click(emulator, user, single, f"variations:{key}:{upscaled.id}:0")
            job = await finished(bot, await wait_for_result(emulator, record))
            results[key] = job
            assert job.request.seed == SEED + 1 and job.request.variation_strength == strength
            assert job.request.operation == "txt2img" and job.image_count == 4
            assert (job.request.width, job.request.height) == (32, 32)
        image2 = original.image_paths[1]
        subtle = np.mean([distance(image2, path) for path in results["subtle"].image_paths])
        strong = np.mean([distance(image2, path) for path in results["strong"].image_paths])
        assert subtle < strong


async def test_remix_edits_the_prompt_before_a_variation_or_a_reroll(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    user = emulator.add_user(name="carol")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        grid = await imagine(emulator, user)
        original = await finished(bot, grid)
        remix = f"variations:remix:{original.id}:0"

        opened = await click(emulator, user, grid, remix)
        assert await opened.wait_for_response() == 9  # a modal
        assert opened.modal is not None and opened.modal["title"] == "Remix"
        inputs = {row["components"][0]["custom_id"]: row["components"][0]
                  for row in opened.modal["components"]}
        assert inputs["prompt"]["value"] == "a red cat"
        submit = await emulator.submit_modal(user, opened, {"prompt": "a blue dog",
                                                            "image": "2"})
        varied = await finished(bot, await wait_for_result(emulator, submit))
        assert varied.request.prompt == "a blue dog" and varied.request.seed == SEED + 1
        assert varied.request.variation_strength == 0.25
        assert varied.request_key == f"vary:{submit.id}"  # a remix is a variation or a reroll

        opened = await click(emulator, user, grid, remix)
        await opened.wait_for_response()
        submit = await emulator.submit_modal(user, opened, {"prompt": "a green owl"})
        rerolled = await finished(bot, await wait_for_result(emulator, submit))
        assert rerolled.request.prompt == "a green owl"
        assert rerolled.request.seed != SEED and rerolled.request.variation_seed is None
        assert rerolled.request_key == f"reroll:{submit.id}"

        before = await bot.ledger.balance(user.id)
        opened = await click(emulator, user, grid, remix)
        await opened.wait_for_response()
        bad = await emulator.submit_modal(user, opened, {"image": "9", "strength": "wild"})
        refusal = await emulator.wait_for_message(lambda m: m.interaction_id == bad.id)
        assert refusal.ephemeral and "subtle" in refusal.content
        assert await bot.ledger.balance(user.id) == before
        assert await bot.ledger.audit() == []


async def test_two_open_forms_on_one_image_and_a_form_left_open_across_a_restart(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    first, second = emulator.add_user(name="erin"), emulator.add_user(name="fay")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        grid = await imagine(emulator, first)
        original = await finished(bot, grid)
        remix = f"variations:remix:{original.id}:0"
        forms = [await click(emulator, user, grid, remix) for user in (first, second)]
        for form in forms:
            assert await form.wait_for_response() == 9
        for user, form, prompt in ((first, forms[0], "a blue dog"), (second, forms[1], "an owl")):
            submit = await emulator.submit_modal(user, form, {"prompt": prompt})
            remixed = await finished(bot, await wait_for_result(emulator, submit))
            assert (remixed.owner_id, remixed.request.prompt) == (user.id, prompt)
        left_open = await click(emulator, first, grid, remix)
        assert await left_open.wait_for_response() == 9

    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        before = await bot.ledger.balance(first.id)
        late = await emulator.submit_modal(first, left_open, {"prompt": "a green owl"})
        answer = await emulator.wait_for_message(lambda m: m.interaction_id == late.id)
        assert answer.ephemeral and "opened before the bot restarted" in answer.content
        assert await bot.ledger.balance(first.id) == before


async def test_a_variation_that_fails_after_the_hold_is_refunded(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    user = emulator.add_user(name="dave")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        grid = await imagine(emulator, user)
        original = await finished(bot, grid)
        before = await bot.ledger.balance(user.id)
        emulator.set_upload_limit(100)  # the new grid is made, then cannot be posted
        vary = await click(emulator, user, grid, f"variations:v:{original.id}:0")
        failed = await wait_for_text(emulator, vary, "not charged")
        assert "too large" in failed.content
        assert await bot.ledger.balance(user.id) == before
        assert await bot.ledger.pending_holds(user.id) == 0
        assert await bot.ledger.audit() == []
