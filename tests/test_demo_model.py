"""The shipped demo model, through the engine's runner: it must follow prompts, not just run.

Small samples of the measurements in engine/demo/evaluate.py (docs/demo-model.md has the
full-size numbers); each threshold here fails for a model that ignores the text, the
guidance scale, the negative prompt or the seed.
"""

from __future__ import annotations

import json
import random

import pytest

from engine.demo import dataset, evaluate
from engine.demo.checker import read_image

# Slow: loading the demo model and generating its samples takes half a minute on a CPU.
pytestmark = pytest.mark.slow

MODEL = evaluate.MODEL_DIR


@pytest.fixture(scope="module")
def demo() -> evaluate.DemoModel:
    return evaluate.load(MODEL)


def test_folder_is_a_small_sd15_checkpoint():
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["feature_extractor"] == [None, None]
    unet = json.loads((MODEL / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 4
    weights = list(MODEL.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    assert sum(w.stat().st_size for w in weights) <= 25 * 1024 * 1024
    assert not list(MODEL.rglob("*.bin"))
    assert (MODEL / "tokenizer" / "vocab.json").exists()
    assert (MODEL / "tokenizer" / "merges.txt").exists()
    extra = json.loads((MODEL / "imaginebot.json").read_text())
    assert extra["family"] == "sd15"
    assert extra["defaults"]["width"] >= 64 and extra["defaults"]["height"] >= 64


@pytest.fixture(scope="module")
def accuracy(demo):
    items = evaluate.prompts(6)
    return (evaluate.attribute_accuracy(demo, items, seeds=2),
            evaluate.attribute_accuracy(demo, items, seeds=2, cfg=1.0))


def test_default_settings_follow_the_prompt(accuracy):
    guided, _ = accuracy
    # Chance is 1/8 for colours, 1/5 for shapes and 1/9 for positions (the full evaluation in
    # docs/demo-model.md: colour 97%, background 100%, shape 88%, position 100%).
    assert guided["color"] >= 0.8, guided
    assert guided["background"] >= 0.9, guided
    assert guided["position"] >= 0.8, guided
    assert guided["shape"] >= 0.7, guided


@pytest.mark.parametrize("position", list(dataset.POSITIONS))
def test_position_words_place_the_shape(demo, position):
    phrase = dataset.caption_for(random.Random(0), "circle", "red", None, position, "large")
    assert read_image(evaluate.generate(demo, phrase, 0)[0]).position == position, phrase


def test_guidance_sharpens_colours(accuracy):
    # 15% of training captions name a wrong colour, so unguided the model draws the named one
    # about that much less often (full evaluation: 85% at cfg 1.0 against 97%). A sign error
    # or an ignored guidance scale makes the two equal.
    guided, unguided = accuracy
    assert unguided["color"] <= guided["color"] - 0.2, (guided, unguided)


def test_negative_prompt_removes_a_colour_only_with_guidance(demo):
    def reds(**options) -> int:
        rate = evaluate.color_rate(demo, "a circle on a white background", "red", 16, **options)
        return round(rate * 16)

    plain = reds()
    assert plain >= 2  # the prompt names no colour: some seeds are red
    assert reds(negative="red") <= 1
    # cfg 1.0 turns guidance off, and with it the negative prompt.
    assert reds(negative="red", cfg=1.0) == reds(cfg=1.0) >= 2


def test_negative_prompt_steers_away_from_a_colour(demo):
    prompt = "a circle on a white background"
    changed = 0
    for seed in range(6):
        plain = read_image(evaluate.generate(demo, prompt, seed)[0])
        avoided = read_image(evaluate.generate(demo, prompt, seed, negative=plain.color)[0])
        changed += avoided.color != plain.color
    assert changed >= 5


def test_subtle_variations_keep_colour_and_shape(demo):
    assert evaluate.variation_keep_rate(demo, evaluate.prompts(4)) >= 0.75


def test_seeds_are_reproducible_and_distinct(demo):
    prompt = "a star on a black background"
    first, second = evaluate.generate(demo, prompt, 42, count=2)
    again = evaluate.generate(demo, prompt, 43)[0]
    assert evaluate.png_bytes(second) == evaluate.png_bytes(again)
    assert evaluate.png_bytes(first) != evaluate.png_bytes(second)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "euler_a", "dpmpp_2m",
                                     "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "lcm"])
def test_every_sd15_sampler_draws_the_background(demo, sampler):
    image = evaluate.generate(demo, "a large yellow square on a blue background", 0,
                              sampler=sampler)[0]
    assert read_image(image).background == "blue"
