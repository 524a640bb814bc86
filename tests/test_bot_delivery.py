"""Delivery exactly once, even across a crash: the real bot, ledger and engine on the emulator.

A "crash" here is a step that never returns (the process is dead from that point on), then a
shutdown that cancels it, then a new bot on the same database: nothing after the step runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.app import ImagineBot
from bot.jobs.models import Job, JobState
from bot.jobs.queue import JobQueue
from bot.ledger import Ledger
from sandbox import DiscordEmulator, StoredMessage, User
from tests.support.bot import SharedEngine, running_bot, wait_for_job, wait_for_result
from tests.test_bot_imagine import imagine, job_id_of

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def killed_here(*args: Any, **kwargs: Any) -> Any:
    """A step the process never gets past."""
    await asyncio.Event().wait()


async def row_once(bot: ImagineBot, job_id: str, ready: str, tries: int = 400) -> Job:
    """The job row once its attribute ``ready`` is set."""
    for _ in range(tries):
        job = await bot.jobs.get(job_id)
        if job is not None and getattr(job, ready) is not None:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never got its {ready}")


def results(emulator: DiscordEmulator) -> list[StoredMessage]:
    """Every message in the channel that shows a result."""
    return [m for m in emulator.messages.values()
            if not m.deleted and m.embeds and m.attachments]


async def assert_charged_once(bot: ImagineBot, user: User, job: Job, before: int) -> None:
    assert job.state == JobState.DELIVERED and not job.delivered_free
    assert await bot.ledger.hold_status(job.hold_id) == "captured"
    kinds = [entry.kind for entry in await bot.ledger.history(user.id)]
    assert kinds.count("capture") == 1
    assert await bot.ledger.balance(user.id) == before - job.cost
    assert await bot.ledger.audit() == []


async def test_a_crash_between_posting_and_charging_posts_nothing_again(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine, monkeypatch):
    user = emulator.add_user(name="wes")
    async with running_bot(tmp_path, emulator, engine=shared_engine, shutdown_grace=0.0) as bot:
        before = await bot.ledger.touch(user.id)
        monkeypatch.setattr(Ledger, "capture", killed_here)
        record = await imagine(emulator, user, steps=2)
        message = await wait_for_result(emulator, record)
        job_id = message.embeds[0]["footer"]["text"].split()[1]
        job = await row_once(bot, job_id, "result_message_id")
        # Recorded when Discord returned the edit, before the capture that never came.
        assert job.result_message_id == message.id and job.state == JobState.RUNNING
    monkeypatch.undo()
    revisions = len(message.history)

    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        job = await wait_for_job(bot, job.id, JobState.DELIVERED)
        assert results(emulator) == [message]
        assert len(message.history) == revisions  # not posted again, not even edited
        await assert_charged_once(bot, user, job, before)


async def test_a_crash_right_after_a_new_result_message_was_made_leaves_one(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine, monkeypatch):
    user = emulator.add_user(name="xan")
    async with running_bot(tmp_path, emulator, engine=shared_engine, shutdown_grace=0.0) as bot:
        before = await bot.ledger.touch(user.id)
        monkeypatch.setattr(type(bot.presenter), "deliver", killed_here)
        record = await imagine(emulator, user, steps=2)
        job_id = job_id_of(await emulator.wait_for_message(
            lambda m: m.interaction_id == record.id and bool(m.custom_ids())))
        await row_once(bot, job_id, "result")
    monkeypatch.undo()
    # Someone deleted the job's message meanwhile, so its result needs a new one.
    emulator.store.delete(emulator.messages[record.original_message_id or 0])

    # Killed again, the moment Discord returned the new message: nothing recorded it.
    monkeypatch.setattr(JobQueue, "attach_message", killed_here)
    async with running_bot(tmp_path, emulator, engine=shared_engine, shutdown_grace=0.0) as bot:
        posted = await emulator.wait_for_message(
            lambda m: m.interaction_id is None and bool(m.embeds), timeout=60)
        assert (await bot.jobs.get(job_id)).result_message_id is None  # type: ignore[union-attr]
    monkeypatch.undo()

    # Back within Discord's nonce window: the same nonce returns the message made before.
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        job = await wait_for_job(bot, job_id, JobState.DELIVERED)
        assert results(emulator) == [posted] and len(posted.history) == 1
        assert job.result_message_id == job.message_id == posted.id
        await assert_charged_once(bot, user, job, before)
