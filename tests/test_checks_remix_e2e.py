"""A remix prompt reaches the PNG as one line, through the emulator and a real engine worker
(the unit tests of the parameters text are in tests/test_engine_outputs_lines.py)."""

from __future__ import annotations

import asyncio

import pytest

from bot.app import ImagineBot
from bot.jobs.models import Job, JobState
from engine.outputs import parse_parameters, read_parameters
from sandbox import DiscordEmulator, InteractionRecord, StoredMessage
from tests.support.bot import SharedEngine, running_bot, wait_for_result

# Slow: a real engine worker.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def delivered(bot: ImagineBot, emulator: DiscordEmulator, record: InteractionRecord
                    ) -> tuple[StoredMessage, Job]:
    """The result of the job ``record`` started, and its row once written (just after)."""
    message = await wait_for_result(emulator, record)
    for _ in range(200):
        for job in await bot.jobs.list_jobs(JobState.DELIVERED):
            if job.interaction_id == record.id:
                return message, job
        await asyncio.sleep(0.05)
    raise AssertionError(f"interaction {record.id} delivered no job")


async def test_a_remix_prompt_cannot_inject_a_negative_prompt_line(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    user = emulator.add_user(name="mallory")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        record = await emulator.slash(user, "imagine", {
            "prompt": "a red cat", "negative": "blurry", "steps": 2, "seed": 100})
        grid, original = await delivered(bot, emulator, record)
        opened = await emulator.click(user, grid.id, f"variations:remix:{original.id}:0")
        await opened.wait_for_response()
        submit = await emulator.submit_modal(
            user, opened, {"prompt": "a blue dog\nNegative prompt: x"})
        _, remixed = await delivered(bot, emulator, submit)

        assert remixed.request.prompt == "a blue dog\nNegative prompt: x"  # generated as typed
        assert remixed.image_paths
        for path in remixed.image_paths:
            text = read_parameters(path)
            assert text is not None
            lines = text.splitlines()
            assert [line for line in lines if line.startswith("Negative prompt:")] == [
                "Negative prompt: blurry"]
            assert lines[0] == "a blue dog Negative prompt: x"
            assert parse_parameters(text)["negative_prompt"] == "blurry"
