"""Where the image goes on the outpainting canvas, and which pixels are painted.

A move is planned in two steps. First the canvas the image is placed on: Zoom Out makes it
``factor`` times the image on both axes, with the image in the middle; a pan makes it ``factor``
times the image along one axis, with the image against the opposite edge. Then the output
size: Zoom Out keeps the image's own size (the picture shrinks into it, as on Midjourney), a
pan keeps the whole canvas (the picture grows on one side). Either is brought within the
bot's pixel limit, keeping its aspect ratio, and snapped down to :data:`SIZE_MULTIPLE`. The
*box* is where the image sits in the output; the mask is everything outside it.

Pure functions (Pillow only), so the bot plans a move before anything is charged and the
worker paints exactly the plan that the job records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from plugins.zoom import Direction

#: Output sizes are multiples of this: every model family's size multiple (8 or 16) divides
#: it, so the engine's validation never changes a planned size.
SIZE_MULTIPLE = 16
#: The colour of the new area before it is painted (the inpainting pipelines replace it all;
#: an inpainting checkpoint sees the masked area as this middle grey).
FILL = (127, 127, 127)

#: (left, top, right, bottom) in output pixels, right and bottom excluded.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Plan:
    """The output's size and where the source image goes in it."""

    size: tuple[int, int]
    box: Box


def fit(width: float, height: float, limit: int, multiple: int = SIZE_MULTIPLE,
        ) -> tuple[int, int]:
    """The largest size with this aspect ratio and at most ``limit`` pixels, each side a
    multiple of ``multiple`` (rounded down, at least one multiple)."""
    scale = min(1.0, math.sqrt(limit / (width * height)))
    fitted = [max(multiple, math.floor(side * scale / multiple) * multiple)
              for side in (width, height)]
    if fitted[0] * fitted[1] > limit:  # a very thin canvas: its short side is one multiple
        longer = 0 if fitted[0] >= fitted[1] else 1
        fitted[longer] = max(multiple, limit // fitted[1 - longer] // multiple * multiple)
    return fitted[0], fitted[1]


def plan(source: tuple[int, int], direction: Direction, factor: float, limit: int) -> Plan:
    """Where ``source`` (width, height) goes for a move, in an output within ``limit`` pixels."""
    if factor <= 1:
        raise ValueError(f"a move needs a factor above 1, not {factor}")
    width, height = source
    grow_x = factor if direction in ("out", "left", "right") else 1.0
    grow_y = factor if direction in ("out", "up", "down") else 1.0
    canvas_w, canvas_h = width * grow_x, height * grow_y
    # The image's corner on the canvas: centred for zoom, against the far edge for a pan.
    x = {"out": (canvas_w - width) / 2, "left": canvas_w - width}.get(direction, 0.0)
    y = {"out": (canvas_h - height) / 2, "up": canvas_h - height}.get(direction, 0.0)
    size = fit(width, height, limit) if direction == "out" else fit(canvas_w, canvas_h, limit)
    sx, sy = size[0] / canvas_w, size[1] / canvas_h
    box = (round(x * sx), round(y * sy), round((x + width) * sx), round((y + height) * sy))
    return Plan(size, box)


def box_size(box: Box) -> tuple[int, int]:
    return box[2] - box[0], box[3] - box[1]


def place(source: Image.Image, plan: Plan) -> tuple[Image.Image, Image.Image]:
    """The canvas (the source resized into the box, :data:`FILL` around it) and the mask
    (white where the pipeline paints, black where the source stays)."""
    canvas = Image.new("RGB", plan.size, FILL)
    canvas.paste(source.convert("RGB").resize(box_size(plan.box), Image.Resampling.LANCZOS),
                 plan.box[:2])
    mask = Image.new("L", plan.size, 255)
    mask.paste(0, plan.box)
    return canvas, mask


def keep_source(painted: Image.Image, canvas: Image.Image, plan: Plan) -> Image.Image:
    """The painted image with the box's own pixels put back.

    The pipeline returns the whole canvas through the VAE, which softens the kept picture a
    little; the source's pixels are the ones the user chose, so they stay exactly.
    """
    result = painted.convert("RGB").copy()
    result.paste(canvas.crop(plan.box), plan.box[:2])
    return result
