"""/imagine's model option end to end: picked by name, never a path, and no filesystem probe.

Refusals need no engine worker (``idle_bot``); the one generation by name shares a worker.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bot.jobs.models import JobState
from sandbox import DiscordEmulator
from tests.support.bot import SharedEngine, idle_bot, running_bot, wait_for_job, wait_for_result

pytestmark = pytest.mark.asyncio(loop_scope="module")

UNKNOWN = "That model is not available here; pick one from the list."


async def test_every_unknown_model_gets_one_answer_and_nothing_is_charged(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a model")
    allowed = tmp_path / "models" / "dreamy"  # allowed, yet its path is no name
    allowed.mkdir(parents=True)
    async with idle_bot(tmp_path, models=[str(allowed)]) as (emu, bot):
        user = emu.add_user(name="mallory")
        before = await bot.ledger.touch(user.id)
        values = ["/etc/passwd", "/root", str(tmp_path / "missing"), str(tmp_path / "notes.txt"),
                  "no-such-model", str(allowed), "models/dreamy"]
        answers = []
        for value, aspect in [(value, "1:1") for value in values] + [("/etc/passwd", None)]:
            options = {"prompt": "a cat", "model": value} | ({"aspect": aspect} if aspect else {})
            record = await emu.slash(user, "imagine", options)
            reply = await emu.wait_for_message(
                lambda m, record=record: m.interaction_id == record.id and m.ephemeral,
                timeout=10)
            answers.append(reply.content)
            assert emu.messages[record.original_message_id or 0].deleted
        assert answers == [UNKNOWN] * len(answers)

        assert await bot.ledger.balance(user.id) == before
        assert await bot.ledger.pending_holds(user.id) == 0
        with sqlite3.connect(tmp_path / "bot.db") as db:
            assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        db.close()


async def test_autocomplete_offers_names_never_paths(tmp_path: Path):
    folder, single = tmp_path / "models" / "dreamy", tmp_path / "weights" / "juggernaut.safetensors"
    async with idle_bot(tmp_path, models=[str(folder), str(single), "org/sdxl-turbo"]
                        ) as (emu, _bot):
        user = emu.add_user(name="alice")
        everything = await emu.autocomplete(user, "imagine", {"prompt": "x", "model": ""},
                                            "model")
        assert everything == [{"name": name, "value": name} for name in
                              ["demo", "dreamy", "juggernaut", "sdxl-turbo"]]
        assert not any("/" in choice["name"] + choice["value"] for choice in everything)
        narrowed = await emu.autocomplete(user, "imagine", {"prompt": "x", "model": "JUGG"},
                                          "model")
        assert narrowed == [{"name": "juggernaut", "value": "juggernaut"}]


@pytest.mark.slow
async def test_a_model_picked_by_name_generates_and_shows_no_path(
        tmp_path: Path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine, models=["demo"]) as bot:
        user = emulator.add_user(name="bob")
        choices = await emulator.autocomplete(user, "imagine", {"prompt": "x", "model": "tiny"},
                                              "model")
        (choice,) = choices
        record = await emulator.slash(user, "imagine", {
            "prompt": "a red cat", "model": choice["value"], "aspect": "1:1", "steps": 2})
        message = await wait_for_result(emulator, record)
        job_id = message.embeds[0]["footer"]["text"].split()[1]
        job = await wait_for_job(bot, job_id, JobState.DELIVERED)
        assert job.request.model == str(shared_engine.settings.model)  # mapped back by name
        assert str(Path(shared_engine.settings.model).parent) not in json.dumps(message.embeds)
