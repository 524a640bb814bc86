"""Prompt flags (engine.flags): the one parser of /imagine and `imaginebot generate`."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import RequestError
from engine.flags import FLAGS, PromptFlags, parse_flags
from engine.request import SEED_LIMIT, GenerationRequest
from engine.samplers import A1111_NAMES, SAMPLERS


def test_flags_at_the_end_of_a_pasted_prompt():
    flags = parse_flags("a lighthouse at dusk, oil painting --ar 16:9 --no text, watermark "
                        "--seed 7 --steps 20 --cfg 6.5 --style Film Noir --sampler euler_a")
    assert flags == PromptFlags(prompt="a lighthouse at dusk, oil painting", aspect="16:9",
                                negative="text, watermark", seed=7, steps=20, cfg=6.5,
                                style="Film Noir", sampler="euler_a")


def test_a_prompt_without_flags_is_left_as_it_is():
    assert parse_flags("  a cat  ") == PromptFlags(prompt="a cat")
    # hyphens inside words or before no letter start no flag
    assert parse_flags("cats--dogs -- a 2--3 --7").prompt == "cats--dogs -- a 2--3 --7"


def test_midjourney_spellings_em_dash_aspect_and_a1111_sampler_names():
    flags = parse_flags("a cat —aspect 2:3 --sampler DPM++ 2M Karras")
    assert (flags.prompt, flags.aspect, flags.sampler) == ("a cat", "2:3", "dpmpp_2m_karras")


def test_explicit_options_win_and_no_is_added_to_the_negative_prompt():
    flags = parse_flags("a cat --seed 7 --steps 9 --cfg 3 --no dogs --sampler euler")
    explicit = GenerationRequest(prompt="ignored", negative_prompt="blurry", seed=1, cfg=None)
    request = flags.apply(explicit)
    assert request.prompt == "a cat"
    assert request.negative_prompt == "blurry, dogs"
    assert (request.seed, request.steps, request.cfg, request.sampler) == (1, 9, 3.0, "euler")
    assert flags.apply(GenerationRequest(prompt="x")).negative_prompt == "dogs"


@pytest.mark.parametrize(("text", "named"), [
    ("a cat --v 6", "--v"),
    ("a cat --seed x", "--seed"),
    ("a cat --seed -1", "--seed"),
    (f"a cat --seed {SEED_LIMIT}", "--seed"),
    ("a cat --steps 0", "--steps"),
    ("a cat --steps 2.5", "--steps"),
    ("a cat --cfg nan", "--cfg"),
    ("a cat --cfg lots", "--cfg"),
    ("a cat --ar 16x9", "--ar"),
    ("a cat --ar 9:1", "--ar"),
    ("a cat --aspect 0:1", "--aspect"),
    ("a cat --sampler warp", "--sampler"),
    ("a cat --no", "--no"),
    ("a cat --seed 1 --seed 2", "--seed"),
    ("a cat --ar 1:1 --aspect 1:1", "--aspect"),
])
def test_bad_flags_are_refused_with_one_sentence_that_names_them(text, named):
    with pytest.raises(RequestError) as caught:
        parse_flags(text)
    message = str(caught.value)
    assert named in message and "\n" not in message and message.count(". ") == 0


# -- properties -----------------------------------------------------------------------------

#: Text that holds no flag: no word may start with "--" or an em dash.
_words = st.text(string.ascii_letters + string.digits + ",.!?'()", min_size=1, max_size=12)
_text = st.lists(_words, min_size=1, max_size=6).map(" ".join)
_aspect = st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(
    lambda ab: max(ab) <= 4 * min(ab)).map(lambda ab: f"{ab[0]}:{ab[1]}")
_flags = st.builds(
    PromptFlags, prompt=_text | st.just(""), aspect=st.none() | _aspect,
    seed=st.none() | st.integers(0, SEED_LIMIT - 1), negative=st.none() | _text,
    steps=st.none() | st.integers(1, 10_000),
    cfg=st.none() | st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    style=st.none() | _text, sampler=st.none() | st.sampled_from(SAMPLERS))


@given(_flags)
def test_flags_round_trip(flags):
    assert parse_flags(flags.text()) == flags


@given(_flags)
def test_explicit_options_always_win(flags):
    explicit = GenerationRequest(prompt="x", seed=3, steps=4, cfg=5.0, sampler="ddim")
    applied = flags.apply(explicit)
    assert (applied.seed, applied.steps, applied.cfg, applied.sampler) == (3, 4, 5.0, "ddim")


@given(_text, st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(
    lambda name: name not in FLAGS), _text)
def test_unknown_flags_are_refused_by_name(prompt, name, value):
    with pytest.raises(RequestError, match=f"unknown flag --{name}"):
        parse_flags(f"{prompt} --{name} {value}")


@given(_text, st.sampled_from(["seed", "steps"]),
       st.text(string.ascii_letters + ".-+", min_size=1, max_size=8))
def test_whole_number_flags_refuse_other_text(prompt, name, value):
    with pytest.raises(RequestError, match=f"--{name} must be"):
        parse_flags(f"{prompt} --{name} {value}")


@given(st.sampled_from(sorted(A1111_NAMES.items())))
def test_every_a1111_sampler_name_is_understood(pair):
    name, label = pair
    assert parse_flags(f"x --sampler {label}").sampler == name
