"""/credits end to end: the real discord.py client against the Discord emu."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sandbox.models import StoredMessage
from tests.support.bot import answer, idle_bot


def embed_text(message: StoredMessage) -> str:
    embed = message.embeds[0]
    parts = [embed.get("title", ""), embed.get("description", "")]
    parts += [f"{field['name']}: {field['value']}" for field in embed.get("fields", [])]
    return "\n".join(parts)


async def test_credits_shows_balance_after_signup_bonus(tmp_path):
    async with idle_bot(tmp_path, signup_credits=200, daily_credits=100) as (emu, bot):
        alice = emu.add_user(name="alice")
        message = await answer(emu, await emu.slash(alice, "credits"))
        assert message.ephemeral
        text = embed_text(message)
        assert "Available: **300** credits" in text  # signup bonus and today's allowance
        assert "Held for jobs in progress: 0 credits" in text
        assert "+200** signup bonus" in text and "+100** daily allowance" in text
        midnight = datetime.combine(emu.clock.now().date() + timedelta(days=1),
                                    datetime.min.time(), tzinfo=UTC)
        assert f"+100 <t:{int(midnight.timestamp())}:R>" in text
        assert await bot.ledger.balance(alice.id) == 300


async def test_credits_lists_holds_and_only_the_last_ten_entries(tmp_path):
    async with idle_bot(tmp_path, signup_credits=50, daily_credits=0) as (emu, bot):
        bob = emu.add_user(name="bob")
        await bot.ledger.touch(bob.id)
        for n in range(12):
            await bot.ledger.grant(bob.id, 1, actor_id=emu.owner.id, reason=f"gift {n}",
                                   key=f"test:{n}")
        await bot.ledger.hold(bob.id, 7, key="test:hold")
        text = embed_text(await answer(emu, await emu.slash(bob, "credits")))
        assert "Available: **55** credits" in text
        assert "Held for jobs in progress: 7 credits" in text
        assert "Next daily grant: none on this bot" in text
        statement = text.split("**Last 10 entries**\n")[1].split("\n")[:10]
        assert "**-7** reserved for a job" in statement[0]
        assert [re.search(r"gift \d+", line)[0] for line in statement[1:]] == [
            f"gift {n}" for n in range(11, 2, -1)]
        assert f"granted by <@{emu.owner.id}>" in statement[1]


async def test_credits_only_in_allowed_channels(tmp_path):
    async with idle_bot(tmp_path, allowed_channel_ids="1234") as (emu, bot):
        dave = emu.add_user(name="dave")
        message = await answer(emu, await emu.slash(dave, "credits"))
        assert message.ephemeral
        assert message.content == "Commands work only in <#1234>."
        assert message.embeds == []
        bot.settings.allowed_channel_ids.add(emu.channel_id)
        message = await answer(emu, await emu.slash(dave, "credits"))
        assert "Available" in embed_text(message)


async def test_by_default_a_new_account_waits_a_week_for_the_signup_bonus(tmp_path):
    """Alt accounts made for the bonus: by default only accounts 7 days old get it."""
    async with idle_bot(tmp_path, signup_credits=200, daily_credits=0) as (emu, bot):
        assert bot.settings.min_account_age_days == 7  # the default, not set by this test
        fresh = emu.add_user(name="fresh", created_at=emu.clock.now() - timedelta(days=6))
        aged = emu.add_user(name="aged", created_at=emu.clock.now() - timedelta(days=8))
        for user in (fresh, aged):
            await answer(emu, await emu.slash(user, "credits"))
        assert await bot.ledger.balance(fresh.id) == 0
        assert await bot.ledger.balance(aged.id) == 200
