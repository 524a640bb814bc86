"""/imagine end to end: the real bot, ledger and engine against the Discord emulator.

One engine worker serves the whole module (see tests/support/bot.py); each test starts its own
bot on a fresh database. The worker-crash test kills that worker, so it runs last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from typing import Any

import aiohttp
import pytest

from bot.app import ImagineBot
from bot.jobs import queue
from bot.jobs.models import JobState
from bot.jobs.queue import MAX_ATTEMPTS
from sandbox import DiscordEmulator, InteractionRecord, StoredMessage, User
from tests.support.bot import (
    SharedEngine,
    answer,
    running_bot,
    wait_for_job,
    wait_for_result,
    wait_for_text,
)

# Slow: a real engine worker and a bot per test.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

START_CREDITS = 300  # signup 200 + daily 100
#: Enough steps that a job is still running while the test clicks (tiny model: ms per step).
SLOW_STEPS = 30


async def imagine(emulator: DiscordEmulator, user: User, prompt: str = "a red cat",
                  **options: Any) -> InteractionRecord:
    record = await emulator.slash(user, "imagine", {"prompt": prompt, **options})
    assert await record.wait_for_response() == 5  # deferred at once
    return record


async def refusal(emulator: DiscordEmulator, record: InteractionRecord) -> StoredMessage:
    """The ephemeral answer that replaces a refused request's "thinking" message."""
    message = await emulator.wait_for_message(
        lambda m: m.interaction_id == record.id and m.ephemeral, timeout=30)
    original = emulator.messages[record.original_message_id or 0]
    assert original.deleted
    return message


async def assert_untouched(bot: ImagineBot, user: User, before: int) -> None:
    assert await bot.ledger.balance(user.id) == before
    assert await bot.ledger.pending_holds(user.id) == 0
    assert await bot.ledger.audit() == []


def message_cost(message: StoredMessage) -> int:
    fields = {field["name"]: field["value"] for field in message.embeds[0]["fields"]}
    return int(fields["Cost"].split()[0])


def job_id_of(message: StoredMessage) -> str:
    cancel = next(c for c in message.custom_ids() if c.startswith("core:cancel:"))
    return cancel.rsplit(":", 1)[1]


async def test_happy_path_previews_grid_buttons_and_balance(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        user = emulator.add_user(name="alice")
        record = await imagine(emulator, user, negative="blurry", steps=2, seed=7,
                               sampler="euler")
        message = await wait_for_result(emulator, record)

        contents = [revision.content for revision in message.history]
        assert any(text.startswith("⏳ Queued") and "4 credits" in text for text in contents)
        previews = [r for r in message.history if "step" in r.content and r.attachments]
        assert previews and previews[0].attachments[0].filename == "preview.png"
        assert [a.filename for a in message.attachments] == ["grid.png"]
        assert message.attachments[0].data.startswith(b"\x89PNG")
        embed = message.embeds[0]
        fields = {field["name"]: field["value"] for field in embed["fields"]}
        assert embed["description"] == "a red cat" and fields["Negative"] == "blurry"
        assert fields["Seed"].split(", ")[0] == "7" and fields["Sampler"] == "euler"
        assert fields["Steps"] == "2" and fields["Cost"] == "4 credits"
        assert "Balance" not in fields  # public: the owner alone is told (tests/test_bot_shown.py)
        assert embed["image"]["url"] == "attachment://grid.png"
        job_id = embed["footer"]["text"].split()[1]
        params_button = f"example:params:{job_id}:0"
        assert params_button in message.custom_ids()  # the plugins' buttons...
        assert not any(c.startswith("core:cancel") for c in message.custom_ids())  # ...no ❌

        assert await bot.ledger.balance(user.id) == START_CREDITS - 4
        assert await bot.ledger.audit() == []
        job = await wait_for_job(bot, job_id, JobState.DELIVERED)
        assert job.interaction_token is None  # secrets are not kept once done

        click = await emulator.click(user, message.id, params_button)
        params = await emulator.wait_for_message(lambda m: m.interaction_id == click.id)
        assert params.ephemeral and "Seed: 7" in params.content

        shown = await emulator.slash(user, "show", {"job_id": job_id})
        reposted = await wait_for_result(emulator, shown)
        assert reposted.id != message.id
        assert reposted.custom_ids() == message.custom_ids()
        assert "Balance" not in {field["name"] for field in reposted.embeds[0]["fields"]}

        emulator.clock.advance((bot.settings.job_retention_days + 1) * 86400)
        assert await bot.prune_jobs() == 1
        assert await bot.jobs.get(job_id) is None
        assert not (bot.settings.output_dir / job_id).exists()


async def test_invalid_input_and_blocked_prompt_are_refused_without_charge(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine,
                           blocklist=["forbidden"]) as bot:
        user = emulator.add_user(name="bob")
        before = await bot.ledger.touch(user.id)

        wrong = await refusal(emulator, await imagine(emulator, user, sampler="flow_euler"))
        assert "Sampler flow_euler does not work with sd15 models" in wrong.content
        blocked = await refusal(emulator, await imagine(emulator, user, "a forbidden thing"))
        assert "isn't allowed" in blocked.content
        big = await refusal(emulator, await imagine(emulator, user, steps=101))
        assert "Steps must be between 1 and 100" in big.content
        await assert_untouched(bot, user, before)


async def test_insufficient_credits_names_the_next_grant(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine, signup_credits=0,
                           daily_credits=3) as bot:
        user = emulator.add_user(name="carol")
        before = await bot.ledger.touch(user.id)
        answer = await refusal(emulator, await imagine(emulator, user, steps=2))
        next_grant = int(bot.ledger.next_daily_at().timestamp())
        assert "costs 4 credits and you have 3" in answer.content
        assert f"<t:{next_grant}:R>" in answer.content
        await assert_untouched(bot, user, before)


async def test_queue_limit_and_cancel_buttons(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine, queue_per_user=1) as bot:
        owner, other = emulator.add_user(name="dave"), emulator.add_user(name="eve")
        before = await bot.ledger.touch(owner.id)

        running = await imagine(emulator, owner, steps=SLOW_STEPS)
        running_message = await wait_for_text(emulator, running, "Generating")
        queued = await imagine(emulator, owner, steps=2)
        queued_message = await wait_for_text(emulator, queued, "Queued, next in line")
        full = await refusal(emulator, await imagine(emulator, owner, steps=2))
        assert "already have 1 jobs waiting" in full.content

        queued_id = job_id_of(queued_message)
        cancel = f"core:cancel:{queued_id}"
        stranger = await emulator.click(other, queued_message.id, cancel)
        denied = await emulator.wait_for_message(lambda m: m.interaction_id == stranger.id)
        assert denied.ephemeral and "Only the person who started this job" in denied.content
        await emulator.click(owner, queued_message.id, cancel)
        await wait_for_text(emulator, queued, "🚫 Cancelled")
        await emulator.click(owner, running_message.id, f"core:cancel:{job_id_of(running_message)}")
        done = await wait_for_text(emulator, running, "🚫 Cancelled")
        assert done.attachments == [] and done.components == []

        await wait_for_job(bot, queued_id, JobState.CANCELLED)
        await assert_untouched(bot, owner, before)


async def test_waiting_messages_follow_the_queue(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine, monkeypatch):
    monkeypatch.setattr(queue, "POSITION_INTERVAL", 0.05)
    async with running_bot(tmp_path, emulator, engine=shared_engine):
        first, second, third = (emulator.add_user(name=n) for n in ("gus", "hal", "ivy"))
        running = await imagine(emulator, first, steps=100)  # busy while the others queue
        running_message = await wait_for_text(emulator, running, "Generating")
        ahead = await imagine(emulator, second, steps=2)
        ahead_message = await wait_for_text(emulator, ahead, "Queued, next in line")
        behind = await imagine(emulator, third, steps=2)
        await wait_for_text(emulator, behind, "Queued, position 2")

        await emulator.click(second, ahead_message.id, f"core:cancel:{job_id_of(ahead_message)}")
        await wait_for_text(emulator, behind, "Queued, next in line")
        await emulator.click(first, running_message.id,
                             f"core:cancel:{job_id_of(running_message)}")  # just faster
        result = await wait_for_result(emulator, behind)
        shown = [r.content for r in result.history]
        queued = [n for n, text in enumerate(shown) if text.startswith("⏳ Queued")]
        started = next(n for n, text in enumerate(shown) if text.startswith("🎨"))
        assert "position 2" in shown[queued[0]] and "next in line" in shown[queued[-1]]
        assert max(queued) < started, shown  # a late queue update never hides the progress


async def test_upload_limit_reencodes_then_refuses(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        user = emulator.add_user(name="frank")
        first = await wait_for_result(emulator, await imagine(emulator, user, steps=2, seed=5))
        png_size = len(first.attachments[0].data)

        emulator.set_upload_limit(png_size - 1)
        smaller = await wait_for_result(emulator, await imagine(emulator, user, steps=2, seed=5))
        attachment = smaller.attachments[0]
        assert attachment.filename.endswith((".webp", ".jpg"))
        assert len(attachment.data) < png_size
        assert "re-encoded" in smaller.embeds[0]["footer"]["text"]
        before = await bot.ledger.balance(user.id)

        emulator.set_upload_limit(100)
        record = await imagine(emulator, user, steps=2)
        failed = await wait_for_text(emulator, record, "too large")
        assert failed.attachments == [] and failed.embeds == []
        await assert_untouched(bot, user, before)


async def test_restart_mid_queue_loses_nothing(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    syncs = 0
    register = emulator.register_commands

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal syncs
        syncs += 1
        return register(*args, **kwargs)

    emulator.register_commands = counting  # type: ignore[method-assign]
    alice, bob = emulator.add_user(name="alice"), emulator.add_user(name="bob")
    async with running_bot(tmp_path, emulator, engine=shared_engine,
                           shutdown_grace=0.0) as bot:
        earlier = await wait_for_result(emulator, await imagine(emulator, alice, steps=2))
        records = []
        # The first is caught running by the shutdown (the worker stops it between steps).
        for user, steps in ((alice, 12), (alice, 2), (bob, 2)):
            records.append(await imagine(emulator, user, steps=steps))
            await wait_for_text(emulator, records[-1], "Queued")
        await wait_for_text(emulator, records[0], "Generating")
    assert syncs == 1
    # Down: the running job was put back; nothing was charged or refunded.
    paused = emulator.messages[records[0].original_message_id or 0]
    assert "restarting" in paused.content
    # As if the process had died instead: one job caught running (run again), and one caught
    # running for the last allowed time (refunded).
    with sqlite3.connect(tmp_path / "bot.db") as db:
        for record, attempts in ((records[1], 1), (records[2], MAX_ATTEMPTS)):
            db.execute("UPDATE jobs SET state = 'running', attempts = ? WHERE interaction_id = ?",
                       (attempts, record.id))
    db.close()

    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        assert syncs == 1  # unchanged commands are not synced again
        results = [await wait_for_result(emulator, record) for record in records[:2]]
        assert all(len(message.attachments) == 1 for message in results)
        assert any("resumed after a restart" in r.content for r in results[1].history)
        refunded = await wait_for_text(emulator, records[2], "could not be finished")
        assert "not charged" in refunded.content
        jobs = await bot.jobs.list_jobs(user_id=alice.id)
        jobs = [await wait_for_job(bot, job.id, JobState.DELIVERED) for job in jobs]
        assert len(jobs) == 3
        assert await bot.ledger.balance(alice.id) == START_CREDITS - sum(j.cost for j in jobs)
        assert await bot.ledger.balance(bob.id) == START_CREDITS
        assert await bot.ledger.pending_holds(bob.id) == 0
        assert await bot.ledger.audit() == []

        # A button on a message from before the restart still works.
        custom_id = next(c for c in earlier.custom_ids() if c.startswith("example:params:"))
        click = await emulator.click(bob, earlier.id, custom_id)
        answer = await emulator.wait_for_message(lambda m: m.interaction_id == click.id)
        assert answer.ephemeral and "Steps: 2" in answer.content

    async with running_bot(tmp_path, emulator, engine=shared_engine, sync=True):
        assert syncs == 2  # `imaginebot run --sync` forces it


async def test_result_arrives_after_the_token_expired(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        user = emulator.add_user(name="gina")
        first = await imagine(emulator, user, steps=SLOW_STEPS // 2)
        await wait_for_text(emulator, first, "Generating")
        late = await imagine(emulator, user, steps=2)
        await wait_for_text(emulator, late, "Queued")
        emulator.clock.advance(16 * 60)  # both tokens are dead from here on
        for record in (first, late):
            message = await wait_for_result(emulator, record)
            assert message.id == record.original_message_id  # the same message, edited
        assert await bot.ledger.balance(user.id) == START_CREDITS - 8
        assert await bot.ledger.audit() == []


async def test_rate_limits_and_server_errors_are_survived(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        user = emulator.add_user(name="hank")
        emulator.fail_next("POST", "/interactions/*", count=1, status=500)
        emulator.fail_next("PATCH", "/webhooks/*", count=1, status=502)
        record = await imagine(emulator, user, steps=10)
        message = await wait_for_text(emulator, record, "Generating")
        assert emulator.faults.injected == 2

        # discord.py never exceeds a limit it knows of, so a 429 needs someone else spending
        # the bucket: here the test, with a no-op edit of the same message.
        emulator.set_rate_limit(1, per=3.0)
        url = (f"{emulator.api_url}/webhooks/{emulator.application_id}/{record.token}"
               "/messages/@original")
        async with aiohttp.ClientSession() as session, session.patch(
                url, json={"content": message.content}) as response:
            assert response.status == 200
        for _ in range(200):  # the bot's next edit (within 3 s) is refused with a 429...
            if emulator.rate_limiter.rejected:
                break
            await asyncio.sleep(0.05)
        assert emulator.rate_limiter.rejected == 1
        emulator.set_rate_limit(50)  # ...and retried after retry_after; no need to go on slowly
        message = await wait_for_result(emulator, record)
        assert message.embeds[0]["footer"]["text"].startswith("job ")
        assert await bot.ledger.balance(user.id) == START_CREDITS - message_cost(message)


async def test_jobs_command_is_for_admins_only(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine):
        user = emulator.add_user(name="ivan")
        done = await wait_for_result(emulator, await imagine(emulator, user, steps=2))
        refused = await emulator.slash(user, "jobs list")
        denied = await answer(emulator, refused)
        assert denied.ephemeral and "Only the bot's administrators" in denied.content

        listed = await emulator.slash(emulator.owner, "jobs list")
        table = await answer(emulator, listed)
        job_id = done.embeds[0]["footer"]["text"].split()[1]
        assert table.ephemeral and f"`{job_id}`" in table.content


async def test_an_admin_inspects_and_cancels_a_members_job(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        user = emulator.add_user(name="kate")
        before = await bot.ledger.touch(user.id)
        record = await imagine(emulator, user, steps=SLOW_STEPS)
        job_id = job_id_of(await wait_for_text(emulator, record, "Generating"))

        asked = await emulator.slash(emulator.owner, "jobs info", {"job_id": job_id})
        info = await answer(emulator, asked)
        assert info.ephemeral and f"`{job_id}`" in info.content and "running" in info.content
        refused = await emulator.slash(user, "jobs cancel", {"job_id": job_id})
        no = await answer(emulator, refused)
        assert no.ephemeral and "Only the bot's administrators" in no.content

        cancel = await emulator.slash(emulator.owner, "jobs cancel", {"job_id": job_id})
        yes = await answer(emulator, cancel)
        assert yes.ephemeral and "not charged" in yes.content
        await wait_for_text(emulator, record, "🚫 Cancelled")
        await wait_for_job(bot, job_id, JobState.CANCELLED)
        await assert_untouched(bot, user, before)
        assert await bot.ledger.audit() == []

        unknown = await emulator.slash(emulator.owner, "jobs info", {"job_id": "nope"})
        missing = await answer(emulator, unknown)
        assert missing.ephemeral and "There is no job `nope`" in missing.content


async def test_worker_crash_refunds_and_says_so(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        user = emulator.add_user(name="judy")
        before = await bot.ledger.touch(user.id)
        record = await imagine(emulator, user, steps=SLOW_STEPS)
        await wait_for_text(emulator, record, "Generating")
        pid = shared_engine.client.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        crashed = await wait_for_text(emulator, record, "crashed")
        assert "not charged" in crashed.content
        await assert_untouched(bot, user, before)
