"""/imagine with an image prompt, prompt flags and a style, end to end: the real bot, ledger
and engine against the Discord emulator (whose slash commands take attachment options)."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.jobs.models import JobState
from bot.pricing import request_cost
from engine.outputs import parse_parameters, read_parameters
from sandbox import DiscordEmulator, StoredMessage
from tests.support.bot import SharedEngine, idle_bot, running_bot, wait_for_job, wait_for_result

pytestmark = pytest.mark.asyncio(loop_scope="module")

START_CREDITS = 300  # signup 200 + daily 100
STYLES = "name,prompt,negative_prompt\nNoir,\"noir photo of {prompt}\",colour\n"


def png(width: int = 40, height: int = 24) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def fields_of(message: StoredMessage) -> dict[str, str]:
    return {field["name"]: field["value"] for field in message.embeds[0]["fields"]}


@pytest.mark.slow
async def test_imagine_from_an_attachment_with_flags_and_a_style(
        tmp_path: Path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    styles = tmp_path / "styles.csv"
    styles.write_text(STYLES)
    # one credit per image-step of 32x32: a price that tells 5 steps from 5 x 0.8
    async with running_bot(tmp_path, emulator, engine=shared_engine, styles_file=styles,
                           price_base_pixels=32 * 32, price_base_steps=1) as bot:
        user = emulator.add_user(name="alice")
        assert await emulator.autocomplete(user, "imagine", {"prompt": "x", "style": "no"},
                                           "style") == [{"name": "Noir", "value": "Noir"}]
        record = await emulator.slash(user, "imagine", {
            "prompt": "a red fox --ar 1:1 --steps 5 --no text --seed 3 --cfg 20 --style Noir",
            "cfg": 6.0, "image": ("fox.png", png()), "strength": 0.8})
        message = await wait_for_result(emulator, record)

        embed, fields = message.embeds[0], fields_of(message)
        assert embed["description"] == "noir photo of a red fox"  # flags gone, style merged
        assert fields["Negative"] == "text, colour"
        assert (fields["Steps"], fields["CFG"], fields["Size"]) == ("5", "6", "32x32")
        assert fields["Seed"].startswith("3, 4")
        assert (fields["Style"], fields["Image prompt"]) == ("Noir", "strength 0.8")
        job = await wait_for_job(bot, embed["footer"]["text"].split()[1], JobState.DELIVERED)
        request = job.request
        assert (request.strength, request.style, request.cfg) == (0.8, "Noir", 6.0)
        source = bot.settings.output_dir / "sources" / f"{request.source_image}.png"
        assert Image.open(source).size == (32, 32)
        # priced as 4 steps (5 x 0.8) of a generation, and charged that
        assert job.cost == request_cost(bot.settings, request) == 4 * 4
        assert await bot.ledger.balance(user.id) == START_CREDITS - job.cost

        grid = Image.open(io.BytesIO(message.attachments[0].data))
        parameters = parse_parameters(read_parameters(grid) or "")
        assert (parameters["strength"], parameters["source_image"], parameters["style"]) == (
            0.8, request.source_image, "Noir")

        # U remakes from the image prompt's job: the result keeps the style and the source
        click = await emulator.click(user, message.id, f"upscale:u:{job.id}:1")
        upscaled = await wait_for_result(emulator, click)
        assert (fields_of(upscaled)["Style"], fields_of(upscaled)["Size"]) == ("Noir", "64x64")


async def test_bad_image_prompts_styles_and_flags_are_refused_without_charge(tmp_path: Path):
    styles = tmp_path / "styles.csv"
    styles.write_text(STYLES)
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")
    async with idle_bot(tmp_path, styles_file=styles, image_prompt_max_bytes=64 * 1024
                        ) as (emulator, bot):
        user = emulator.add_user(name="bob")
        before = await bot.ledger.balance(user.id)
        cases = [
            ({"image": ("notes.png", b"these are not pixels")}, "must be a PNG, JPEG or WebP"),
            ({"image": ("huge.png", bytes(65 * 1024))}, "image prompts may be at most"),
            ({"image": ("bomb.png", bomb.getvalue())}, "too many pixels"),
            ({"image": ("fox.png", png()), "strength": 0.0}, "above 0 and at most 1"),
            ({"strength": 0.5}, "Strength applies to an image"),
            ({"style": "Vaporwave"}, "Unknown style 'Vaporwave'"),
            ({"prompt": "a fox --ar 16:9 --chaos 40"}, "Unknown flag --chaos"),
        ]
        for options, says in cases:
            record = await emulator.slash(user, "imagine", {"prompt": "a fox", **options})
            refusal = await emulator.wait_for_message(
                lambda m, r=record: m.interaction_id == r.id and m.ephemeral, timeout=30)
            assert says in refusal.content, (options, refusal.content)
        assert await bot.ledger.balance(user.id) == before
        assert await bot.ledger.pending_holds(user.id) == 0
        assert not (bot.settings.output_dir / "sources").exists()
    with sqlite3.connect(tmp_path / "bot.db") as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    db.close()
