"""What the server shows, end to end through the emulator: the real bot and ledger, and a
scripted engine (the stream of events a worker would send), so no worker is started.

Each test sends the bad value and checks the exact answer, and that nothing was charged or
lost. tests/test_bot_shown_results.py runs the real engine for long prompts and upscales.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image

from bot import generation
from bot.app import ImagineBot
from bot.jobs.models import JobState
from engine.events import Done, EngineEvent, Failed, ImageResult, Progress
from engine.request import GenerationRequest
from sandbox import DiscordEmulator, InteractionRecord, StoredMessage, User
from sandbox.limits import ATTACH_FILES
from sandbox.models import ALL_PERMISSIONS
from tests.support.bot import answer, idle_bot, wait_for_job, wait_for_result, wait_for_text

Script = Callable[[GenerationRequest], list[EngineEvent]]
REFERENCE = r"The bot's administrators can look it up with the reference `([0-9a-f]{8})`\."


def script_engine(bot: ImagineBot, monkeypatch: pytest.MonkeyPatch, script: Script) -> None:
    """The engine answers each request with ``script(request)``, a little apart."""

    async def stream(request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        for event in script(request):
            await asyncio.sleep(0.05)
            yield event

    monkeypatch.setattr(bot.engine.client, "submit", stream)


def done(output_dir: Path, warnings: list[str] | None = None) -> Script:
    """One image, saved where the worker would save it."""

    def script(request: GenerationRequest) -> list[EngineEvent]:
        path = output_dir / request.job_id / "0.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 40, 40)).save(path)
        return [Done(request.job_id, [ImageResult(path, 7, 8, 8)], None, 0.1,
                     {"model": "demo", "warnings": warnings or []})]

    return script


async def imagine(emu: DiscordEmulator, user: User, prompt: str = "a cat",
                  **options: object) -> InteractionRecord:
    return await emu.slash(user, "imagine", {"prompt": prompt, **options})


async def ephemeral(emu: DiscordEmulator, record: InteractionRecord) -> StoredMessage:
    return await emu.wait_for_message(
        lambda m: m.interaction_id == record.id and m.ephemeral, timeout=10)


async def assert_untouched(bot: ImagineBot, user: User, before: int) -> None:
    assert await bot.ledger.balance(user.id) == before
    assert await bot.ledger.pending_holds(user.id) == 0
    assert await bot.ledger.audit() == []


def job_id_of(message: StoredMessage) -> str:
    return str(message.embeds[0]["footer"]["text"].split()[1])


async def test_markdown_is_escaped_and_the_balance_is_told_only_to_the_owner(
        tmp_path, monkeypatch):
    async with idle_bot(tmp_path) as (emu, bot):
        script_engine(bot, monkeypatch, done(bot.settings.output_dir))
        user = emu.add_user(name="mallory")
        await bot.ledger.touch(user.id)
        record = await imagine(emu, user, "[free nitro](https://evil.example) **now** @everyone",
                               negative="<@123> ~~x~~")
        message = await wait_for_result(emu, record)
        embed = message.embeds[0]
        assert embed["description"] == (
            "\\[free nitro\\]\\(https://evil.example\\) \\*\\*now\\*\\* @\u200beveryone")
        fields = {field["name"]: field["value"] for field in embed["fields"]}
        assert fields["Negative"] == "\\<@123> \\~\\~x\\~\\~"
        assert "Balance" not in fields and "left" not in str(embed)

        job = await wait_for_job(bot, job_id_of(message), JobState.DELIVERED)
        balance = await bot.ledger.balance(user.id)
        line = await ephemeral(emu, record)
        assert line.content == (f"This result cost {job.cost} credits; you have {balance} "
                                "credits left. /credits shows the details.")
        assert await bot.ledger.audit() == []


async def test_an_engine_error_shows_a_fixed_sentence_and_a_reference(
        tmp_path, monkeypatch, caplog):
    secret = "RuntimeError: cannot open /srv/models/secret/unet.safetensors"
    async with idle_bot(tmp_path) as (emu, bot):
        user = emu.add_user(name="eve")
        before = await bot.ledger.touch(user.id)
        script_engine(bot, monkeypatch, lambda request: [Failed(request.job_id, secret, "error")])
        with caplog.at_level(logging.ERROR, logger="bot.generation"):
            record = await imagine(emu, user)
            failed = await wait_for_text(emu, record, "failed", timeout=10)
        match = re.fullmatch(f"⚠️ Making your images failed. {REFERENCE} You were not charged; "
                             "please try again.", failed.content)
        assert match is not None, failed.content
        assert f"[ref {match[1]}] job " in caplog.text and secret in caplog.text
        await assert_untouched(bot, user, before)

        # The engine's refusals are sentences for users: kept, but without the path.
        script_engine(bot, monkeypatch, lambda request: [Failed(
            request.job_id, "model file /srv/models/x.safetensors is broken", "invalid")])
        record = await imagine(emu, user)
        invalid = await wait_for_text(emu, record, "broken", timeout=10)
        assert invalid.content == "⚠️ model file x.safetensors is broken. You were not charged."
        await assert_untouched(bot, user, before)


async def test_a_result_discord_refuses_is_posted_with_a_minimal_embed(tmp_path, monkeypatch):
    async with idle_bot(tmp_path) as (emu, bot):
        script_engine(bot, monkeypatch, done(bot.settings.output_dir))
        user = emu.add_user(name="oscar")
        before = await bot.ledger.touch(user.id)
        full = generation.result_embed

        def too_big(*args: object, **kwargs: object) -> object:
            embed = full(*args, **kwargs)  # type: ignore[arg-type]
            embed.description = "x" * generation.DESCRIPTION_MAX
            for name in "yz":  # with the description, over 6000 in all
                embed.add_field(name=name, value=name * generation.FIELD_VALUE_MAX)
            return embed

        monkeypatch.setattr(generation, "result_embed", too_big)
        message = await wait_for_result(emu, await imagine(emu, user))
        embed = message.embeds[0]
        assert embed["description"].startswith("The details of this result are too long")
        job = await wait_for_job(bot, job_id_of(message), JobState.DELIVERED)
        assert await bot.ledger.balance(user.id) == before - job.cost  # delivered, charged
        assert await bot.ledger.audit() == []


async def test_missing_channel_permissions_are_refused_with_nothing_held(tmp_path):
    async with idle_bot(tmp_path) as (emu, bot):
        user = emu.add_user(name="peggy")
        before = await bot.ledger.touch(user.id)
        emu.set_bot_permissions(ALL_PERMISSIONS & ~ATTACH_FILES)
        reply = await ephemeral(emu, await imagine(emu, user))
        assert reply.content == (
            "I can't post images in this channel: I'm missing the **Attach Files** permission "
            "here. A server administrator can grant it, or use another channel. You were not "
            "charged.")
        await assert_untouched(bot, user, before)
        assert await bot.jobs.list_jobs() == []


async def test_a_failing_progress_edit_is_logged_and_the_result_still_comes(
        tmp_path, monkeypatch, caplog):
    async with idle_bot(tmp_path) as (emu, bot):
        finish = done(bot.settings.output_dir)
        script_engine(bot, monkeypatch, lambda request: [
            Progress(request.job_id, 1, 2, None), *finish(request)])

        def broken(*args: object) -> object:
            raise RuntimeError("progress edit exploded")

        monkeypatch.setattr(generation, "progress_fields", broken)
        user = emu.add_user(name="trent")
        with caplog.at_level(logging.WARNING, logger="bot.generation"):
            await wait_for_result(emu, await imagine(emu, user))
        assert "could not show step 1" in caplog.text
        assert "progress edit exploded" in caplog.text


async def test_show_follows_the_channel_guild_and_cooldown_rules(tmp_path, monkeypatch):
    async with idle_bot(tmp_path, cooldown_seconds=30) as (emu, bot):
        script_engine(bot, monkeypatch, done(bot.settings.output_dir))
        owner, stranger = emu.add_user(name="olive"), emu.add_user(name="sam")
        message = await wait_for_result(emu, await imagine(emu, owner))
        job_id = job_id_of(message)
        await wait_for_job(bot, job_id, JobState.DELIVERED)
        before = {user.id: await bot.ledger.touch(user.id) for user in (owner, stranger)}

        async def show(user: User, refused: bool = False) -> StoredMessage:
            record = await emu.slash(user, "show", {"job_id": job_id})
            return await (answer(emu, record) if refused else wait_for_result(emu, record))

        bot.settings.allowed_channel_ids.add(1234)
        refused = await show(stranger, refused=True)
        assert refused.ephemeral and refused.content == "Commands work only in <#1234>."
        bot.settings.allowed_channel_ids.clear()

        waiting = await show(owner, refused=True)  # /imagine started the owner's cooldown
        assert waiting.ephemeral
        assert waiting.content == "Please wait 30 seconds before generating again."
        shown = await show(stranger)  # same server, same channel: public
        assert not shown.ephemeral and shown.attachments and job_id_of(shown) == job_id
        emu.clock.advance(30)

        with sqlite3.connect(tmp_path / "bot.db") as db:  # as if made in another server
            db.execute("UPDATE jobs SET guild_id = 1 WHERE id = ?", (job_id,))
        refused = await show(stranger, refused=True)
        assert refused.ephemeral and refused.content == "There is no finished job with this id."
        private = await show(owner)
        assert private.ephemeral and private.attachments and job_id_of(private) == job_id
        for user in (owner, stranger):
            await assert_untouched(bot, user, before[user.id])
