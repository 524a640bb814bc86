"""Prompt validation, channel rules and cooldowns (bot/checks.py) and text folding
(bot/textfold.py); admin checks run end to end in tests/test_bot_admin.py, the checks through
/imagine and remix in tests/test_checks_e2e.py."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from bot.checks import CheckFailure, Cooldowns, blocked_word, check_text, validate_prompt
from bot.settings import Settings
from bot.textfold import CAPITALS, LOOKALIKES, fold

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
    config = settings(blocklist=["gore", "Bad Word", "zen"])
    for prompt in ["GORE", "so much gore!", "«Gore»", "_gore_", "a BAD WORD.", "ｇｏｒｅ",
                   "a bad  word", "bad\tword", "bad\u00a0word", "g\u200bore", "go\u00adre",
                   "\ufeffgore", "g\u200d\u2060ore", "gor\u034fe\ufe0f", "gо\u0433е",
                   "ＧΟＲΕ", "𝐠𝐨𝐫𝐞", "ⓖⓞⓡⓔ", "🇬🇴🇷🇪", "🅶🅾🆁🅴", "ɢᴏʀᴇ", "ᏀoᎡᎬ", "ΒΑD wοrd", "ΖΕΝ"]:
        with pytest.raises(CheckFailure, match=r"isn't allowed here: “(gore|bad word|zen)”\."):
            validate_prompt(prompt, config)
    for prompt in ["gorey", "ungore", "gore2", "bad words", "a goreeee", "gorë", "gore\u200bs",
                   "góre", "Привет мир", "naïve café", "👩\u200d👩\u200d👧 family", "zenith",
                   "ζεν"]:
        assert validate_prompt(prompt, config) == prompt


#: Invisible characters to hide in a word: format characters (category Cf) and the other
#: default-ignorable ones bot/textfold.py drops.
INVISIBLE = st.one_of(st.characters(categories=["Cf"]),
                      st.sampled_from("\u034f\u115f\u3164\ufe0f\U000e0100"))


def disguised(word: str) -> st.SearchStrategy[str]:
    """``word`` with each letter in either case, fullwidth or as a look-alike from another
    alphabet (in either case), and invisible characters before, between and after the
    letters."""
    gaps = st.text(INVISIBLE, max_size=2)
    capitals = {letter: capital for capital, letter in CAPITALS.items()}
    letters = [st.sampled_from(
        letter + letter.upper() + chr(ord(letter) + 0xFEE0) + LOOKALIKES[letter]
        # "υ" looks like a "u", but its capital "Υ" like a "Y".
        + "".join(char for char in LOOKALIKES[letter].upper() if char not in CAPITALS)
        + capitals.get(letter, "")) for letter in word]
    parts = [strategy for letter in letters for strategy in (gaps, letter)] + [gaps]
    return st.tuples(*parts).map("".join)


@given(data=st.data(), word=st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10),
       before=SEPARATORS, after=SEPARATORS, edge=st.booleans())
def test_a_blocked_word_with_invisible_characters_and_look_alikes_is_refused(
        data, word, before, after, edge):
    typed = data.draw(disguised(word))
    prompt = typed if edge else f"a{before}{typed}{after}b"
    refusal_message = f"Your prompt contains a word that isn't allowed here: “{word}”."
    with pytest.raises(CheckFailure) as refusal:
        validate_prompt(prompt, settings(blocklist=["other", word], max_prompt_length=6000))
    assert refusal.value.message == refusal_message  # the member's own word, no other entry


@given(data=st.data(), word=st.text(alphabet="abcdefghijklm", min_size=1, max_size=8),
       words=st.lists(st.text(alphabet="nopqrstuvwxyz", min_size=1, max_size=8), max_size=6))
def test_clean_text_passes_however_it_is_written(data, word, words):
    """Look-alikes of other letters never add up to a blocked word."""
    prompt = " ".join(data.draw(disguised(clean)) for clean in words) or "x"
    assert validate_prompt(prompt, settings(blocklist=[word])) == prompt.strip()


@given(text=st.text())
def test_folding_is_stable(text):
    """Folding folded text changes nothing, so a blocklist entry and a prompt meet in one form."""
    assert fold(fold(text)) == fold(text)


def test_every_look_alike_folds_to_its_latin_letter():
    assert set(LOOKALIKES) == set(string.ascii_lowercase)
    for letter, chars in LOOKALIKES.items():
        for char in chars:
            # Listed in the form folding leaves them in, so that no case of them is missed.
            assert not char.isascii() and fold(char) == fold(char.upper()) == letter, char
    for capital, letter in CAPITALS.items():
        assert fold(capital, capitals=True) == letter != fold(capital) == fold(capital.lower())
    assert fold("🅐🅩🅰🆉🇦🇿") == "azazaz"  # the letter symbols A to Z that NFKC leaves alone


def test_the_blocklist_is_read_the_same_way():
    assert blocked_word("so much gore", ["ɢо\u200bre"]) == "gore"
    assert blocked_word("so much gore", ["  ", "\u200b"]) is None  # empty entries match nothing


def test_any_text_goes_through_the_same_check():
    label = "negative prompt"
    config = settings(blocklist=["gore"], max_prompt_length=10)
    assert check_text("", config, label) == ""  # only the prompt may not be empty
    assert check_text("  blurry \n", config, label) == "blurry"
    with pytest.raises(CheckFailure) as refusal:
        check_text("g\u200bore", config, label)
    assert refusal.value.message == f"Your {label} contains a word that isn't allowed here: “gore”."
    with pytest.raises(CheckFailure) as refusal:
        check_text("x" * 11, config, label)
    assert refusal.value.message == f"Your {label} is 11 characters long; the limit is 10."


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
