"""Synthetic captioned shapes: the whole training set of the demo model.

Every image is a single flat-coloured shape on a flat background, so a trained model's
output can be checked automatically (see :mod:`engine.demo.checker`). Everything is
derived from one integer seed, so a retrain sees exactly the same data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

#: Palette the model knows. Values sit far apart in RGB so nearest-colour lookup is reliable.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
#: Position name -> shape centre as a fraction of the image side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.24, 0.5),
    "right": (0.76, 0.5),
    "top": (0.5, 0.24),
    "bottom": (0.5, 0.76),
    "top left": (0.24, 0.24),
    "top right": (0.76, 0.24),
    "bottom left": (0.24, 0.76),
    "bottom right": (0.76, 0.76),
}
#: Size name -> shape radius as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.12, "large": 0.21}
#: Where a shape goes when the caption names no position.
DEFAULT_POSITION = "center"

_SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "tiny"), "large": ("large", "big")}
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "center": ("in the center", "in the middle"),
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "top left": ("in the top left corner", "at the top left"),
    "top right": ("in the top right corner", "at the top right"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What an image shows; a false ``stated_*`` flag means the caption left that out."""

    shape: str
    color: str
    background: str
    position: str
    size: str
    caption: str
    stated_color: bool = True
    stated_background: bool = True
    stated_position: bool = True
    stated_size: bool = True


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of a shape centred at (cx, cy) with radius r, as a polygon (circle excluded)."""
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy - r * math.sin(a))
                for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3,
                          math.pi / 2 + 4 * math.pi / 3)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        return points
    if shape == "cross":
        w = 0.32 * r
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
                (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
                (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
               fill: tuple[int, int, int] | int) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r), fill=fill)


def render(scene: Scene, size: int = 64,
           jitter: tuple[float, float, float] = (0, 0, 1)) -> Image.Image:
    """Draw a scene; ``jitter`` = (dx, dy in pixels, radius scale) adds small variety.

    Drawn at 4x and downscaled so edges are anti-aliased like a decoded latent would be.
    """
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLORS[scene.background])
    fx, fy = POSITIONS[scene.position]
    dx, dy, scale = jitter
    cx = (fx * size + dx) * _SUPERSAMPLE
    cy = (fy * size + dy) * _SUPERSAMPLE
    r = SIZES[scene.size] * scale * big
    draw_shape(ImageDraw.Draw(image), scene.shape, cx, cy, r, COLORS[scene.color])
    return image.resize((size, size), Image.Resampling.BOX)


def caption_for(rng: random.Random, shape: str, color: str | None, background: str | None,
                position: str | None, size: str | None) -> str:
    """Free-form English caption; ``None`` attributes are simply not mentioned."""
    noun = shape
    if color is not None:
        noun = f"{color} {noun}"
    if size is not None:
        noun = f"{rng.choice(_SIZE_WORDS[size])} {noun}"
    article = rng.choice(("a ", "a ", ""))
    if article and noun[0] in "aeiou":
        article = "an "
    parts = [article + noun]
    where = rng.choice(_POSITION_PHRASES[position]) if position is not None else None
    if background is None:
        if where:
            parts.append(" " + where)
        return "".join(parts)
    style = rng.randrange(3)
    if style == 0:
        if where:
            parts.append(" " + where)
        parts.append(f" on a {background} background")
    elif style == 1:
        if where:
            parts.append(" " + where)
        parts.append(f", {background} background")
    else:
        parts.append(f" on {background}")
        if where:
            parts.append(" " + where)
    return "".join(parts)


def random_scene(rng: random.Random) -> Scene:
    """One scene; about a quarter of captions leave out each optional attribute."""
    shape = rng.choice(SHAPES)
    color = rng.choice(list(COLORS))
    background = rng.choice([c for c in COLORS if c != color])
    stated_color = rng.random() > 0.15
    stated_background = rng.random() > 0.15
    stated_position = rng.random() > 0.3
    stated_size = rng.random() > 0.3
    position = rng.choice(list(POSITIONS)) if stated_position else DEFAULT_POSITION
    size = rng.choice(list(SIZES))
    caption = caption_for(rng, shape, color if stated_color else None,
                          background if stated_background else None,
                          position if stated_position else None,
                          size if stated_size else None)
    return Scene(shape, color, background, position, size, caption,
                 stated_color, stated_background, stated_position, stated_size)


def generate(count: int, seed: int = 0, size: int = 64) -> Iterator[tuple[Image.Image, Scene]]:
    """Yield ``count`` (image, scene) pairs, identical for identical arguments."""
    rng = random.Random(seed)
    for _ in range(count):
        scene = random_scene(rng)
        jitter = (rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(0.9, 1.1))
        yield render(scene, size, jitter), scene


def vocabulary() -> list[str]:
    """Every word a caption can contain (the tokenizer gives each one its own token)."""
    words = {"a", "an", "on", "in", "the", "at", "background", "corner", ","}
    words.update(SHAPES)
    words.update(COLORS)
    for names in _SIZE_WORDS.values():
        words.update(names)
    for phrases in _POSITION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    return sorted(words)
