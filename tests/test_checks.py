"""Prompt validation, channel rules and cooldowns (bot/checks.py); admin checks run end to end in
tests/test_bot_admin.py."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from bot.checks import CheckFailure, Cooldowns, blocked_word, validate_prompt
from bot.settings import Settings

LETTERS = st.characters(categories=["Ll", "Lu"])
WORDS = st.text(alphabet=LETTERS, min_size=1, max_size=12)
SEPARATORS = st.text(alphabet=" \t\n.,;:!?\"'()[]{}-_/«»¿¡—…*#", min_size=1, max_size=3)


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def case_variant(word: str, flips: list[bool]) -> str:
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(word, flips, strict=False))


@given(prompt=st.text(), blocklist=st.lists(st.text(max_size=8), max_size=4),
       limit=st.integers(min_value=1, max_value=50))
@example(prompt="0\n0", blocklist=["0\n0"], limit=3)  # a blocked entry with a line break
def test_any_text_is_accepted_or_refused_with_a_message(prompt, blocklist, limit):
    config = settings(max_prompt_length=limit, blocklist=blocklist)
    try:
        cleaned = validate_prompt(prompt, config)
    except CheckFailure as refusal:
        assert refusal.message and "\n" not in refusal.message
    else:
        assert cleaned == prompt.strip() and 0 < len(cleaned) <= limit


@given(word=WORDS, other=WORDS, before=st.text(max_size=20), after=st.text(max_size=20),
       left=SEPARATORS, right=SEPARATORS, flips=st.lists(st.booleans(), min_size=12,
                                                          max_size=12), edge=st.booleans())
def test_blocklisted_words_are_refused_in_any_case_with_any_punctuation(
        word, other, before, after, left, right, flips, edge):
    typed = case_variant(word, flips)
    # "Case" means variants that read the same; a few letters change identity when uppercased.
    assume(typed.casefold() == word.casefold())
    prompt = typed if edge else f"{before}{left}{typed}{right}{after}"
    config = settings(blocklist=[other, word], max_prompt_length=6000)
    with pytest.raises(CheckFailure) as refusal:
        validate_prompt(prompt, config)
    assert "blocklist" not in refusal.value.message.lower()
    assert "isn't allowed" in refusal.value.message


@given(word=st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8),
       prefix=st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=3))
def test_a_blocklisted_word_inside_a_longer_word_is_allowed(word, prefix):
    prompt = f"a {prefix}{word} and {word}{prefix}"
    assert blocked_word(prompt, [word]) is None
    assert validate_prompt(prompt, settings(blocklist=[word])) == prompt


def test_blocklist_examples():
    config = settings(blocklist=["gore", "Bad Word"])
    for prompt in ["GORE", "so much gore!", "«Gore»", "_gore_", "a BAD WORD.", "ｇｏｒｅ"]:
        with pytest.raises(CheckFailure):
            validate_prompt(prompt, config)
    for prompt in ["gorey", "ungore", "gore2", "bad words", "a bad  word", "a goreeee"]:
        assert validate_prompt(prompt, config) == prompt


@given(limit=st.integers(min_value=1, max_value=300),
       char=st.characters(categories=["L", "N", "S"]))
def test_length_limit_is_exact(limit, char):
    config = settings(max_prompt_length=limit)
    assert validate_prompt(char * limit, config) == char * limit
    with pytest.raises(CheckFailure) as refusal:
        validate_prompt(char * (limit + 1), config)
    assert f"{limit + 1} characters" in refusal.value.message
    assert str(limit) in refusal.value.message


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_refused(prompt):
    with pytest.raises(CheckFailure, match="Write a prompt"):
        validate_prompt(prompt, settings())


def test_cooldown_refuses_until_the_time_has_passed():
    cooldowns = Cooldowns()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cooldowns.ensure(1, start, 3)
    cooldowns.ensure(2, start, 3)  # another user is not affected
    with pytest.raises(CheckFailure, match="wait 2 seconds"):
        cooldowns.ensure(1, start + timedelta(seconds=1.5), 3)
    with pytest.raises(CheckFailure, match="wait 1 second "):
        cooldowns.ensure(1, start + timedelta(seconds=2.5), 3)
    cooldowns.ensure(1, start + timedelta(seconds=3), 3)
    with pytest.raises(CheckFailure):
        cooldowns.ensure(1, start + timedelta(seconds=4), 3)


def test_zero_cooldown_never_refuses():
    cooldowns = Cooldowns()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(3):
        cooldowns.ensure(1, now, 0)
