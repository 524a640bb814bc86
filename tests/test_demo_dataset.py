"""The synthetic dataset: deterministic, varied, and captions that tell the truth."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.demo import dataset


def test_same_seed_same_images_and_captions():
    first = [(image.tobytes(), scene) for image, scene in dataset.generate(20, seed=5)]
    again = [(image.tobytes(), scene) for image, scene in dataset.generate(20, seed=5)]
    other = [(image.tobytes(), scene) for image, scene in dataset.generate(20, seed=6)]
    assert first == again
    assert first != other


def test_every_attribute_value_appears():
    scenes = [scene for _, scene in dataset.generate(1500, seed=0)]
    assert {s.shape for s in scenes} == set(dataset.SHAPES)
    assert {s.color for s in scenes} == set(dataset.COLORS)
    assert {s.background for s in scenes} == set(dataset.COLORS)
    assert {s.position for s in scenes} == set(dataset.POSITIONS)
    assert {s.size for s in scenes} == set(dataset.SIZES)
    for flag in ("stated_color", "stated_background", "stated_position", "stated_size",
                 "stated_shape"):
        stated = sum(getattr(s, flag) for s in scenes) / len(scenes)
        assert 0.5 < stated < 0.97, flag
    one_word = [s.caption for s in scenes if s.caption in dataset.COLORS]
    assert len(one_word) > 20, "negative prompts are usually one word: the model must see them"


def test_unstated_position_means_the_default():
    scenes = [scene for _, scene in dataset.generate(300, seed=1)]
    assert all(s.position == dataset.DEFAULT_POSITION for s in scenes if not s.stated_position)


def _without_articles(caption: str) -> str:
    return re.sub(r"\ban? ", "", caption)


def _words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+|,", caption))


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_captions_state_exactly_what_they_claim(seed):
    image, scene = next(dataset.generate(1, seed=seed))
    words = _words(scene.caption)
    assert scene.color != scene.background
    assert image.size == (64, 64)
    assert (scene.shape in words) == scene.stated_shape
    assert _words(" ".join(dataset.COLORS)) & words == (
        {scene.color} if scene.stated_color else set()
    ) | ({scene.background} if scene.stated_background else set())
    position_words = {"left", "right", "top", "bottom", "center", "middle"}
    assert bool(words & position_words) == scene.stated_position
    assert bool(words & {"small", "tiny", "large", "big"}) == scene.stated_size
    assert words <= set(dataset.vocabulary())


def test_mislabelled_captions_change_only_captions():
    truthful = list(dataset.generate(2000, seed=4))
    noisy = list(dataset.generate(2000, seed=4, mislabel=True))
    assert [i.tobytes() for i, _ in truthful] == [i.tobytes() for i, _ in noisy]
    wrong = [scene for _, scene in noisy if scene.caption_color is not None]
    full = [s for _, s in noisy if s.stated_color and s.stated_shape]
    assert abs(len(wrong) / len(full) - dataset.MISLABEL_RATE) < 0.03
    for (_, clean), (_, scene) in zip(truthful, noisy, strict=True):
        if scene.caption_color is None:
            assert scene == clean
            continue
        assert scene.caption_color not in (scene.color, scene.background)
        assert scene.caption_color in _words(scene.caption)
        assert scene.color not in _words(scene.caption)
        swapped = scene.caption.replace(scene.caption_color, scene.color)
        assert _without_articles(swapped) == _without_articles(clean.caption)
    assert all(s.caption_color is None for _, s in truthful)


def test_shape_pixels_have_the_shape_colour():
    image, scene = next(dataset.generate(1, seed=3))
    colors = {color for _, color in image.getcolors(64 * 64) or []}
    assert dataset.COLORS[scene.color] in colors
    assert dataset.COLORS[scene.background] in colors
