"""PNG parameters in AUTOMATIC1111's format, and grids."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from engine.outputs import a1111_parameters, make_grid, parse_parameters, read_parameters, save_png
from engine.request import SAMPLERS, GenerationRequest, Variation


def _request(**values) -> GenerationRequest:
    base = {"prompt": "a cat", "width": 512, "height": 512, "steps": 20, "cfg": 7.0,
            "sampler": "euler_a", "seed": 123, "model": "/models/sd15"}
    return GenerationRequest(**{**base, **values})


def test_the_a1111_line():
    request = _request(negative_prompt="blurry", variation_seed=9, variation_strength=0.25)
    text = a1111_parameters(request, 124, {"model": "tiny-sd15"})
    assert text == ("a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
                    "Seed: 124, Size: 512x512, Model: tiny-sd15, Variation seed: 9, "
                    "Variation seed strength: 0.25")


def test_each_image_of_a_variation_grid_names_its_own_variations():
    earlier = (Variation(seed=3, strength=0.6), Variation(seed=40, strength=0.25))
    request = _request(variation_seed=9, variation_strength=0.25, earlier_variations=earlier)
    text = a1111_parameters(request, 123, {}, index=2)
    assert text.endswith("Variation seed: 11, Variation seed strength: 0.25, "
                         "Earlier variations: 3@0.6 40@0.25")
    parsed = parse_parameters(text)
    assert (parsed["variation_seed"], parsed["variation_strength"]) == (11, 0.25)
    assert [Variation(**item) for item in parsed["earlier_variations"]] == list(earlier)


text_st = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1).filter(
    lambda t: t.strip() == t and not t.startswith("Negative prompt:"))


@given(prompt=text_st, negative=st.one_of(st.just(""), text_st),
       seed=st.integers(0, 2**32 - 1), sampler=st.sampled_from(SAMPLERS),
       cfg=st.floats(0, 30).map(lambda c: round(c, 1)), model=text_st)
def test_parameters_round_trip(prompt, negative, seed, sampler, cfg, model):
    request = _request(prompt=prompt, negative_prompt=negative, sampler=sampler, cfg=cfg)
    parsed = parse_parameters(a1111_parameters(request, seed, {"model": model}))
    assert parsed["prompt"] == prompt and parsed["negative_prompt"] == negative
    assert (parsed["seed"], parsed["sampler"], parsed["cfg"]) == (seed, sampler, cfg)
    assert (parsed["steps"], parsed["width"], parsed["height"]) == (20, 512, 512)
    assert parsed["model"] == model


def test_png_carries_its_parameters(tmp_path):
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "job" / "0.png", "a cat\nSteps: 2")
    assert path.exists()
    assert read_parameters(path) == "a cat\nSteps: 2"
    with Image.open(path) as image:
        assert read_parameters(image) == "a cat\nSteps: 2"
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert read_parameters(plain) is None


def test_four_images_make_a_two_by_two_grid():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    grid = make_grid([Image.new("RGB", (10, 6), c) for c in colours])
    assert grid.size == (20, 12)
    assert [grid.getpixel(p) for p in [(1, 1), (11, 1), (1, 7), (11, 7)]] == colours
    assert make_grid([Image.new("RGB", (4, 4))] * 3).size == (8, 8)
