"""The image checker, judged on the dataset generator's own clean images."""

from __future__ import annotations

from PIL import Image

from engine.demo import dataset
from engine.demo.checker import read_image


def test_checker_reads_clean_images_correctly():
    count = 400
    hits = {"color": 0, "background": 0, "shape": 0, "position": 0}
    for image, scene in dataset.generate(count, seed=99):
        seen = read_image(image)
        hits["color"] += seen.color == scene.color
        hits["background"] += seen.background == scene.background
        hits["shape"] += seen.shape == scene.shape
        hits["position"] += seen.position == scene.position
    for name, value in hits.items():
        assert value / count > 0.95, (name, value)


def test_each_shape_colour_and_position_is_told_apart():
    for shape in dataset.SHAPES:
        for position in dataset.POSITIONS:
            scene = dataset.Scene(shape, "orange", "yellow", position, "small", "")
            seen = read_image(dataset.render(scene))
            assert (seen.shape, seen.color, seen.background, seen.position) == (
                shape, "orange", "yellow", position)


def test_blank_image_has_no_shape():
    seen = read_image(Image.new("RGB", (64, 64), dataset.COLORS["green"]))
    assert seen.background == "green"
    assert (seen.color, seen.shape, seen.position) == (None, None, None)


def test_larger_images_are_read_too():
    scene = dataset.Scene("star", "purple", "white", "bottom right", "large", "")
    seen = read_image(dataset.render(scene, size=128))
    assert (seen.shape, seen.color, seen.background, seen.position) == (
        "star", "purple", "white", "bottom right")
