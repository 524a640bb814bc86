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
#: Share of full captions that name a wrong shape colour. Web captions are noisy too, and
#: that is what classifier-free guidance is for: unguided, the model draws the named colour
#: only about as often as the data pairs them; guidance sharpens it back.
MISLABEL_RATE = 0.15

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
    stated_shape: bool = True
    #: The caption names ``caption_color`` although the shape is ``color``.
    caption_color: str | None = None


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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(rng: random.Random, shape: str | None, color: str | None,
                background: str | None, position: str | None, size: str | None) -> str:
    """Free-form English caption; ``None`` attributes are simply not mentioned."""
    noun = " ".join(w for w in (rng.choice(_SIZE_WORDS[size]) if size else None, color, shape)
                    if w)
    article = rng.choice((True, True, False)) and shape is not None
    parts = [f"{_article(noun)} {noun}" if article else noun] if noun else []
    if position is not None:
        parts.append(rng.choice(_POSITION_PHRASES[position]))
    if background is not None:
        style = rng.randrange(3) if noun else 0
        if style == 0:
            parts.append(f"on {_article(background)} {background} background"
                         if noun or rng.random() < 0.5 else f"{background} background")
        elif style == 1:
            parts[-1] += ","
            parts.append(f"{background} background")
        else:
            parts.insert(1, f"on {background}")
    return " ".join(parts)


def random_scene(rng: random.Random, labels: random.Random | None = None) -> Scene:
    """One scene; about a quarter of captions leave out each optional attribute.

    One caption in ten is a single word or phrase ("red", "star", "white background"):
    that is what a negative prompt usually looks like, so the model must know what it means.
    ``labels`` draws the mislabelled colours on its own, so ``rng`` (and so every image)
    is the same with or without them.
    """
    shape = rng.choice(SHAPES)
    color = rng.choice(list(COLORS))
    background = rng.choice([c for c in COLORS if c != color])
    size = rng.choice(list(SIZES))
    if rng.random() < 0.1:
        only = rng.choice(("color", "shape", "background"))
        stated = {"color": only == "color", "background": only == "background",
                  "position": False, "size": False, "shape": only == "shape"}
    else:
        stated = {"color": rng.random() > 0.15, "background": rng.random() > 0.15,
                  "position": rng.random() > 0.3, "size": rng.random() > 0.3, "shape": True}
    position = rng.choice(list(POSITIONS)) if stated["position"] else DEFAULT_POSITION
    named = color
    if labels is not None and stated["color"] and stated["shape"] \
            and labels.random() < MISLABEL_RATE:
        named = labels.choice([c for c in COLORS if c not in (color, background)])
    caption = caption_for(rng, shape if stated["shape"] else None,
                          named if stated["color"] else None,
                          background if stated["background"] else None,
                          position if stated["position"] else None,
                          size if stated["size"] else None)
    return Scene(shape, color, background, position, size, caption, stated["color"],
                 stated["background"], stated["position"], stated["size"], stated["shape"],
                 named if named != color else None)


def generate(count: int, seed: int = 0, size: int = 64,
             mislabel: bool = False) -> Iterator[tuple[Image.Image, Scene]]:
    """Yield ``count`` (image, scene) pairs, identical for identical arguments.

    ``mislabel`` changes only captions (see :data:`MISLABEL_RATE`); the training set uses
    it, the checker's own tests want truthful captions.
    """
    rng = random.Random(seed)
    labels = random.Random(f"mislabel-{seed}") if mislabel else None
    for _ in range(count):
        scene = random_scene(rng, labels)
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
