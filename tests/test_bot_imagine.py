"""/imagine end to end: the real bot, ledger and engine against the Discord emulator.

One engine worker serves the whole module (see tests/bot_harness.py); each test starts its own
bot on a fresh database. The worker-crash test kills that worker, so it runs last.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from bot.app import ImagineBot
from bot.jobs.models import JobState
from bot.sandbox import DiscordEmulator, InteractionRecord, StoredMessage, User
from tests.bot_harness import (  # noqa: F401  (fixtures)
    SharedEngine,
    emulator,
    running_bot,
    shared_engine,
    test_model,
    wait_for_result,
    wait_for_text,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

START_CREDITS = 300  # signup 200 + daily 100
#: Enough steps that a job is still running while the test clicks (tiny model: ms per step).
SLOW_STEPS = 100


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
        assert fields["Balance"] == f"{START_CREDITS - 4} credits"
        assert embed["image"]["url"] == "attachment://grid.png"
        job_id = embed["footer"]["text"].split()[1]
        assert message.custom_ids() == [f"example:params:{job_id}:0"]  # no ❌ any more

        assert await bot.ledger.balance(user.id) == START_CREDITS - 4
        assert await bot.ledger.audit() == []
        job = await bot.jobs.get(job_id)
        assert job is not None and job.state == JobState.DELIVERED
        assert job.interaction_token is None  # secrets are not kept once done

        click = await emulator.click(user, message.id, f"example:params:{job_id}:0")
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
        big = await refusal(emulator, await imagine(emulator, user, steps=SLOW_STEPS + 1))
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

        assert (await bot.jobs.get(queued_id)).state == JobState.CANCELLED  # type: ignore[union-attr]
        await assert_untouched(bot, owner, before)


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
        records = [await imagine(emulator, alice, steps=SLOW_STEPS),
                   await imagine(emulator, alice, steps=2, seed=1),
                   await imagine(emulator, bob, steps=2, seed=2)]
        await wait_for_text(emulator, records[0], "Generating")
        await wait_for_text(emulator, records[2], "Queued")
    assert syncs == 1
    # Down: the running job was put back, nothing ran, nothing was charged or refunded.
    paused = emulator.messages[records[0].original_message_id or 0]
    assert "restarting" in paused.content

    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        assert syncs == 1  # unchanged commands are not synced again
        results = [await wait_for_result(emulator, record) for record in records]
        assert all(len(message.attachments) == 1 for message in results)
        assert any("resumed after a restart" in r.content for r in results[1].history)
        jobs = await bot.jobs.list_jobs()
        assert len(jobs) == 4 and {job.state for job in jobs} == {JobState.DELIVERED}
        costs = {user.id: sum(j.cost for j in jobs if j.owner_id == user.id)
                 for user in (alice, bob)}
        for user in (alice, bob):
            assert await bot.ledger.balance(user.id) == START_CREDITS - costs[user.id]
        assert await bot.ledger.audit() == []

        # A button on a message from before the restart still works.
        custom_id = earlier.custom_ids()[0]
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
        emulator.set_rate_limit(1, per=0.5)
        emulator.fail_next("POST", "/interactions/*", count=1, status=500)
        emulator.fail_next("PATCH", "/webhooks/*", count=1, status=502)
        record = await imagine(emulator, user, steps=2)
        message = await wait_for_result(emulator, record)
        assert message.embeds[0]["footer"]["text"].startswith("job ")
        assert emulator.rate_limiter.rejected > 0 and emulator.faults.injected == 2
        assert await bot.ledger.balance(user.id) == START_CREDITS - 4


async def test_jobs_command_is_for_admins_only(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=shared_engine):
        user = emulator.add_user(name="ivan")
        done = await wait_for_result(emulator, await imagine(emulator, user, steps=2))
        refused = await emulator.slash(user, "jobs list")
        answer = await emulator.wait_for_message(lambda m: m.interaction_id == refused.id)
        assert answer.ephemeral and "Only the bot's administrators" in answer.content

        listed = await emulator.slash(emulator.owner, "jobs list")
        table = await emulator.wait_for_message(lambda m: m.interaction_id == listed.id)
        job_id = done.embeds[0]["footer"]["text"].split()[1]
        assert table.ephemeral and job_id in table.content and "delivered" in table.content


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
