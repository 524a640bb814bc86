"""A1111 prompt weighting and long prompts: the parser, the encoder, and the images.

The parser cases are A1111's own doctests (modules/prompt_parser.py). The encoder is checked
against diffusers' ``encode_prompt``, and images against plain diffusers, on tiny models whose
tokenizer has one token per character.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from hypothesis import given
from hypothesis import strategies as st

from engine.prompting.encoding import CHUNK, PromptEncoder
from engine.prompting.syntax import BREAK, parse_attention, split_loras
from engine.request import GenerationRequest, validate_request
from engine.runner import Runner
from engine.samplers import make_scheduler
from engine.settings import EngineSettings

#: 75 tokens in the tiny character-level tokenizer: the most one chunk holds.
FULL = "abcde " * 15
assert len(FULL.replace(" ", "")) == CHUNK


@pytest.mark.parametrize(("text", "expected"), [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
        ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("a [cat]", [("a ", 1.0), ("cat", 1 / 1.1)]),
    ("one BREAK two", [("one", 1.0), BREAK, ("two", 1.0)]),
    ("", [("", 1.0)]),
])
def test_the_parser_reads_prompts_as_a1111_does(text, expected):
    assert parse_attention(text) == expected


@given(st.text(alphabet=st.characters(blacklist_characters="()[]\\:<>")))
def test_text_without_syntax_parses_to_itself(text):
    if "BREAK" not in text:
        assert parse_attention(text) == [(text, 1.0)]
        assert split_loras(text) == (text, ())


@pytest.fixture(scope="module")
def warm(tiny_model):
    cache: dict[str, tuple[EngineSettings, Runner, DiffusionPipeline]] = {}

    def get(family: str):
        if family not in cache:
            folder = tiny_model(family)
            settings = EngineSettings(model=str(folder), preview_every=0, device="cpu")
            plain = DiffusionPipeline.from_pretrained(folder)
            plain.set_progress_bar_config(disable=True)
            plain.original_config = plain.scheduler.config
            cache[family] = (settings, Runner(settings), plain)
        return cache[family]

    return get


def _request(settings, prompt: str, **values) -> GenerationRequest:
    return validate_request(GenerationRequest(**{
        "prompt": prompt, "seed": 8, "count": 1, "steps": 3, **values}), settings)


def _image(runner: Runner, *requests: GenerationRequest) -> list[np.ndarray]:
    outputs = runner.txt2img(list(requests), lambda *_: None, lambda: False)
    return [np.asarray(image).astype(np.int16) for out in outputs for image in out.images]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_encoder_at_weight_one_is_diffusers_encode_prompt_bit_for_bit(warm, family):
    _, _, plain = warm(family)
    encoder = PromptEncoder(plain, family)
    embeds, pooled = encoder._encode("a red fox, in snow", 1)
    expected = plain.encode_prompt("a red fox, in snow", device="cpu", num_images_per_prompt=1,
                                   do_classifier_free_guidance=False)
    assert torch.equal(embeds, expected[0])
    if family == "sdxl":
        assert pooled is not None and torch.equal(pooled, expected[2])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_weight_of_one_is_no_weight_and_plain_text_is_plain_diffusers(warm, family):
    settings, runner, plain = warm(family)
    request = _request(settings, "a red fox in the snow", sampler="euler")
    (image,) = _image(runner, request)
    (weighted_one,) = _image(runner, _request(settings, "a red (fox:1.0) in the snow",
                                              sampler="euler"))
    assert np.array_equal(image, weighted_one)
    plain.scheduler = make_scheduler("euler", plain.original_config, ("euler",))
    expected = plain("a red fox in the snow", height=request.height, width=request.width,
                     num_inference_steps=3, guidance_scale=request.cfg,
                     generator=torch.Generator("cpu").manual_seed(8)).images[0]
    assert np.array_equal(image, np.asarray(expected).astype(np.int16))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_weights_change_the_image(warm, family):
    settings, runner, _ = warm(family)
    (plain,) = _image(runner, _request(settings, "a red fox in the snow"))
    (heavy,) = _image(runner, _request(settings, "a red (fox:3) in the snow"))
    (light,) = _image(runner, _request(settings, "a red [[[fox]]] in the snow"))
    assert not np.array_equal(plain, heavy) and not np.array_equal(plain, light)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_change_past_token_77_changes_the_image(warm, family):
    settings, runner, _ = warm(family)
    first = _request(settings, FULL + "zzzzzz", negative_prompt="blurry")
    second = _request(settings, FULL + "qqqqqq", negative_prompt="blurry")
    encoder = PromptEncoder(runner.pipeline(settings.model), family)
    assert encoder.group_key(first) == ("chunks", 2)
    (a,) = _image(runner, first)
    (b,) = _image(runner, second)
    assert not np.array_equal(a, b)


def test_chunks_break_after_a_comma_near_their_end_as_a1111_does(warm):
    _, _, plain = warm("sd15")
    encoder = PromptEncoder(plain, "sd15")
    tokenizer = plain.tokenizer
    text = "a" * 70 + ", " + "b" * 10
    first, second = encoder._chunks(text, tokenizer)
    comma = tokenizer.get_vocab()[",</w>"]
    # the comma ends chunk one (71 tokens, then EOS and padding); the b's start chunk two
    assert first[0][:1] == [tokenizer.bos_token_id] and first[0][71] == comma
    assert first[0][72] == tokenizer.eos_token_id and len(first[0]) == CHUNK + 2
    assert second[0][1:11] == tokenizer("b" * 10, add_special_tokens=False).input_ids
    # BREAK starts a new chunk; weights follow their tokens
    one, two = encoder._chunks("(a:1.5) BREAK b", tokenizer)
    assert one[1][:3] == [1.0, 1.5, 1.0] and two[1][:2] == [1.0, 1.0]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_long_and_short_prompts_in_one_batch_get_what_they_get_alone(warm, family):
    settings, runner, _ = warm(family)
    long = _request(settings, FULL + "a hat", seed=3)
    short = _request(settings, "a (red:1.2) fox", seed=4)
    plain = _request(settings, "a fox", seed=5)
    together = _image(runner, long, short, plain)
    alone = [image for request in (long, short, plain) for image in _image(runner, request)]
    for a, b in zip(together, alone, strict=True):
        assert np.abs(a - b).max() <= 2


def test_sd3_reads_long_prompts_up_to_t5s_limit(warm, tiny_model):
    settings, runner, _ = warm("sd3")
    long = "a fox " * 60  # 300 T5 tokens: past SD3's default 256
    encoder = PromptEncoder(runner.pipeline(settings.model), "sd3")
    assert encoder.group_key(_request(settings, "a fox")) == ("t5", None)
    assert encoder.group_key(_request(settings, long)) == ("t5", 512)
    (a,) = _image(runner, _request(settings, long + "red"))
    (b,) = _image(runner, _request(settings, long + "blue"))
    assert not np.array_equal(a, b)


def test_only_text_past_t5s_limit_is_reported_as_ignored(warm):
    settings, runner, _ = warm("sd3")
    (out,) = runner.txt2img([_request(settings, "a cat " * 120)], lambda *_: None,
                            lambda: False)
    (warning,) = out.metadata["warnings"]
    assert "the T5 text encoder reads only 512" in warning
    settings15, runner15, _ = warm("sd15")
    (read_whole,) = runner15.txt2img([_request(settings15, FULL * 3)], lambda *_: None,
                                     lambda: False)
    assert read_whole.metadata["warnings"] == []
