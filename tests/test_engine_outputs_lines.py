"""A prompt cannot add lines to a PNG's parameters text (engine/outputs.py): the format tells
the prompt, the negative prompt and the settings apart by line. The same through a remix, end to
end, is in tests/test_checks_remix_e2e.py."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from engine.outputs import NEGATIVE_PREFIX, a1111_parameters, parse_parameters
from engine.request import GenerationRequest

#: Any text, line breaks of every kind included ("\r\n", "\x85", "\u2028"…).
ANY_TEXT = st.text(st.characters(blacklist_categories=["Cs"]))


def parameters(prompt: str, negative: str) -> str:
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, width=512, height=512,
                                steps=20, cfg=7.0, sampler="euler_a", seed=1, model="sd15")
    return a1111_parameters(request, 1, {})


def one_line(text: str) -> str:
    return " ".join(text.splitlines())


@given(prompt=ANY_TEXT, negative=ANY_TEXT)
def test_each_prompt_is_one_line(prompt, negative):
    # A prompt that itself starts with the prefix is ambiguous in AUTOMATIC1111's format too.
    assume(one_line(prompt).strip() and not one_line(prompt).startswith(NEGATIVE_PREFIX))
    text = parameters(prompt, negative)
    assert len(text.splitlines()) == 2 + bool(negative)
    parsed = parse_parameters(text)
    assert (parsed["prompt"], parsed["negative_prompt"]) == (one_line(prompt), one_line(negative))
    assert (parsed["seed"], parsed["steps"]) == (1, 20)


def test_a_prompt_cannot_inject_a_negative_prompt_line():
    text = parameters("a blue dog\nNegative prompt: x\r\nSteps: 99", "blurry\nSeed: 5")
    assert text.splitlines() == [
        "a blue dog Negative prompt: x Steps: 99", "Negative prompt: blurry Seed: 5",
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15"]
    parsed = parse_parameters(text)
    assert (parsed["negative_prompt"], parsed["steps"], parsed["seed"]) == (
        "blurry Seed: 5", 20, 1)
