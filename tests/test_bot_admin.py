"""/credits-admin end to end: who may use it, and what it writes to the ledger."""

from __future__ import annotations

import logging

from sqlalchemy import select

from bot.ledger import MAX_AMOUNT, MAX_BALANCE
from bot.ledger.models import Transfer
from tests.support.bot import answer, idle_bot


async def admin_transfers(bot, kind: str) -> list[tuple[str, int, int, int, str]]:
    async with bot.ledger.database.connect() as conn:
        rows = await conn.execute(
            select(Transfer.key, Transfer.user_id, Transfer.amount, Transfer.actor_id,
                   Transfer.reason).where(Transfer.kind == kind).order_by(Transfer.id))
        return [tuple(row) for row in rows]


async def test_admin_grant_revoke_balance_history_are_recorded(tmp_path):
    async with idle_bot(tmp_path, signup_credits=0, daily_credits=0) as (emu, bot):
        admin = emu.add_user(name="admin")
        bot.settings.admin_user_ids.add(admin.id)
        bob = emu.add_user(name="bob")

        grant = await emu.slash(admin, "credits-admin grant",
                                {"user": bob, "amount": 50, "reason": "contest winner"})
        reply = await answer(emu, grant)
        assert reply.ephemeral
        assert f"Granted **50** credits to <@{bob.id}>" in reply.content
        assert "balance is now **50**" in reply.content
        assert await admin_transfers(bot, "grant") == [
            (f"admin:grant:{grant.id}", bob.id, 50, admin.id, "contest winner")]

        revoke = await emu.slash(admin, "credits-admin revoke",
                                 {"user": bob, "amount": 80, "reason": "abuse"})
        reply = await answer(emu, revoke)
        assert "Revoked **50** credits" in reply.content and "not 80" in reply.content
        assert await admin_transfers(bot, "revoke") == [
            (f"admin:revoke:{revoke.id}", bob.id, 50, admin.id, "abuse")]
        assert await bot.ledger.balance(bob.id) == 0

        reply = await answer(emu, await emu.slash(admin, "credits-admin revoke", {
            "user": bob, "amount": 5, "reason": "again"}))
        assert "Nothing revoked" in reply.content
        assert len(await admin_transfers(bot, "revoke")) == 1

        await bot.ledger.grant(bob.id, 12, admin.id, "refund", key="test:refund")
        await bot.ledger.hold(bob.id, 2, key="test:hold")
        reply = await answer(emu, await emu.slash(admin, "credits-admin balance", {"user": bob}))
        assert reply.ephemeral
        assert f"<@{bob.id}> has **10** credits available and 2 held" in reply.content

        reply = await answer(emu, await emu.slash(admin, "credits-admin history", {"user": bob}))
        assert reply.ephemeral
        lines = reply.embeds[0]["description"].split("\n")
        assert "**-2** reserved for a job" in lines[0]
        assert f"**+12** granted by <@{admin.id}>: refund" in lines[1]
        assert f"**-50** revoked by <@{admin.id}>: abuse" in lines[2]
        assert f"**+50** granted by <@{admin.id}>: contest winner" in lines[3]
        assert len(lines) == 4


async def test_application_owner_is_an_admin_without_configuration(tmp_path):
    async with idle_bot(tmp_path) as (emu, bot):
        assert bot.settings.admin_user_ids == set()
        carol = emu.add_user(name="carol")
        reply = await answer(emu, await emu.slash(emu.owner, "credits-admin grant", {
            "user": carol, "amount": 3, "reason": "owner says hi"}))
        assert "Granted **3** credits" in reply.content
        assert (await admin_transfers(bot, "grant"))[0][3] == emu.owner.id


async def test_non_admin_is_refused_ephemerally_and_audited(tmp_path, caplog):
    async with idle_bot(tmp_path, signup_credits=10, daily_credits=0) as (emu, bot):
        mallory = emu.add_user(name="mallory")
        await bot.ledger.touch(mallory.id)
        with caplog.at_level(logging.WARNING, logger="bot.checks"):
            for name, options in [
                ("credits-admin grant", {"user": mallory, "amount": 1000, "reason": "me"}),
                ("credits-admin revoke", {"user": emu.owner, "amount": 1, "reason": "x"}),
                ("credits-admin balance", {"user": emu.owner}),
                ("credits-admin history", {"user": emu.owner}),
            ]:
                reply = await answer(emu, await emu.slash(mallory, name, options))
                assert reply.ephemeral
                assert reply.content == "Only the bot's administrators can use this command."
                assert f"refused admin command {name!r} for user {mallory.id}" in caplog.text
        assert await bot.ledger.balance(mallory.id) == 10
        assert await admin_transfers(bot, "grant") == []
        assert await admin_transfers(bot, "revoke") == []


async def test_amounts_over_the_ledgers_limits_are_refused_in_one_sentence(tmp_path):
    async with idle_bot(tmp_path, signup_credits=0, daily_credits=0) as (emu, bot):
        admin = emu.add_user(name="admin")
        bot.settings.admin_user_ids.add(admin.id)
        bob = emu.add_user(name="bob")
        await bot.ledger.grant(bob.id, 50, admin.id, "before", key="test:before")
        for name in ("credits-admin grant", "credits-admin revoke"):
            reply = await answer(emu, await emu.slash(admin, name, {
                "user": bob, "amount": MAX_AMOUNT + 1, "reason": "fat finger"}))
            assert reply.ephemeral
            assert reply.content == ("Nothing changed: one grant or revoke moves at most "
                                     "1,000,000,000,000 credits.")
        assert await bot.ledger.balance(bob.id) == 50

        # Up to the balance limit in grants of the most one may move, then one more.
        for n in range(MAX_BALANCE // MAX_AMOUNT - 1):
            await bot.ledger.grant(bob.id, MAX_AMOUNT, admin.id, "fill", key=f"test:fill:{n}")
        reply = await answer(emu, await emu.slash(admin, "credits-admin grant", {
            "user": bob, "amount": MAX_AMOUNT, "reason": "over the top"}))
        assert reply.ephemeral
        assert reply.content == (f"Nothing changed: that would take <@{bob.id}>'s balance over "
                                 "the limit of 1,000,000,000,000,000 credits.")
        assert await bot.ledger.balance(bob.id) == MAX_BALANCE - MAX_AMOUNT + 50
        assert [key for key, *_ in await admin_transfers(bot, "grant")
                if key.startswith("admin:")] == []
        assert await admin_transfers(bot, "revoke") == []
