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
