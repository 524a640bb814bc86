"""The generation checks as /imagine applies them, against the Discord emulator.

The model does not exist, so every request that passes the checks stops at validation: the
checks' own refusals are told apart from that one, and no engine worker is needed.
"""

from __future__ import annotations

from tests.support.bot import idle_bot

WAIT = "Please wait"


async def test_cooldown_counts_only_requests_that_passed_the_checks(tmp_path):
    async with idle_bot(tmp_path, cooldown_seconds=30, blocklist=["forbidden"],
                        max_prompt_length=20, model=str(tmp_path / "no-model")) as (emu, bot):
        alice, bob = emu.add_user(name="alice"), emu.add_user(name="bob")

        async def imagine(user, prompt: str) -> str:
            record = await emu.slash(user, "imagine", {"prompt": prompt})
            reply = await emu.wait_for_message(
                lambda m: m.interaction_id == record.id and m.ephemeral, timeout=10)
            return reply.content

        assert "isn't allowed here: “forbidden”" in await imagine(alice, "a FORBIDDEN fruit")
        assert "21 characters long; the limit is 20" in await imagine(alice, "x" * 21)
        first = await imagine(alice, "a cat")  # passes the checks, then the model is refused
        assert WAIT not in first and "isn't allowed" not in first
        assert await imagine(alice, "a dog") == (
            "Please wait 30 seconds before generating again.")
        assert WAIT not in await imagine(bob, "a dog")  # cooldowns are per user
        emu.clock.advance(29)
        assert await imagine(alice, "a dog") == "Please wait 1 second before generating again."
        emu.clock.advance(1)
        assert WAIT not in await imagine(alice, "a dog")
        assert await bot.ledger.pending_holds(alice.id) == 0  # refusals hold nothing


async def test_the_negative_prompt_and_hidden_words_are_checked_like_the_prompt(tmp_path):
    async with idle_bot(tmp_path, blocklist=["forbidden"], max_prompt_length=20,
                        model=str(tmp_path / "no-model")) as (emu, bot):
        alice = emu.add_user(name="alice")
        await bot.ledger.grant(alice.id, 50, actor_id=1, reason="test", key="test:grant")

        async def imagine(options: dict[str, str]) -> str:
            record = await emu.slash(alice, "imagine", {"prompt": "a cat", **options})
            reply = await emu.wait_for_message(
                lambda m: m.interaction_id == record.id and m.ephemeral, timeout=10)
            return reply.content

        assert await imagine({"negative": "FORBIDDEN"}) == (
            "Your negative prompt contains a word that isn't allowed here: “forbidden”.")
        assert await imagine({"prompt": "a for\u200bbidd\u00adеn fruit"}) == (  # Cyrillic "е"
            "Your prompt contains a word that isn't allowed here: “forbidden”.")
        assert await imagine({"negative": "x" * 21}) == (
            "Your negative prompt is 21 characters long; the limit is 20.")
        assert "isn't allowed" not in await imagine({"negative": "blurry"})  # the model's turn
        assert await bot.ledger.balance(alice.id) == 50  # refusals charge nothing
        assert await bot.ledger.pending_holds(alice.id) == 0


async def test_a_price_over_the_ledgers_limit_is_refused_in_one_sentence(tmp_path):
    """An owner's price setting so high that one job would pass the ledger's cap on a transfer."""
    async with idle_bot(tmp_path, price_per_image=10**12) as (emu, bot):
        alice = emu.add_user(name="alice")
        before = await bot.ledger.touch(alice.id)
        record = await emu.slash(alice, "imagine", {"prompt": "a cat"})
        reply = await emu.wait_for_message(
            lambda m: m.interaction_id == record.id and m.ephemeral, timeout=10)
        assert reply.content == ("This would cost more credits than one job may take; try a "
                                 "smaller size, fewer steps or fewer images.")
        assert await bot.ledger.balance(alice.id) == before
        assert await bot.ledger.pending_holds(alice.id) == 0
        assert await bot.jobs.list_jobs() == []
