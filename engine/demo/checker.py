"""Read back what a demo-model image shows, so tests can judge generated pictures.

Plain colour statistics and geometry, no learned parts: the background is the palette
colour most border pixels are nearest to, the shape is the largest connected blob that
differs clearly from the background, its class is the template (drawn by the dataset's
own renderer) whose bounding-box mask overlaps it best, and its position is the 3x3 grid
cell holding its centroid.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from engine.demo.dataset import COLORS, SHAPES, draw_shape

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[name] for name in _NAMES], dtype=np.float32)
_GRID = (("top left", "top", "top right"),
         ("left", "center", "right"),
         ("bottom left", "bottom", "bottom right"))
#: RGB distance from the background beyond which a pixel counts as foreground.
_FOREGROUND_DISTANCE = 55.0
#: Blobs smaller than this fraction of the image are noise, not a shape.
_MIN_AREA = 0.002
_TEMPLATE = 32


@dataclass(frozen=True)
class Reading:
    """What the checker saw; ``None`` fields mean no shape was found."""

    color: str | None
    background: str
    shape: str | None
    position: str | None


def nearest_color(pixels: np.ndarray) -> np.ndarray:
    """Palette index nearest to each RGB row of ``pixels`` (shape (n, 3))."""
    distances = ((pixels[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(axis=2)
    return np.asarray(distances.argmin(axis=1))


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected region of ``mask``."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        seen[y, x] = True
        blob = [(int(y), int(x))]
        queue = deque(blob)
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    blob.append((ny, nx))
                    queue.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def _crop_to_template(mask: np.ndarray) -> np.ndarray:
    """The mask's bounding box, resampled to a fixed square so shapes compare at any size."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    image = Image.fromarray((box * 255).astype(np.uint8))
    resized = image.resize((_TEMPLATE, _TEMPLATE), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


@cache
def _templates() -> dict[str, np.ndarray]:
    size = 256
    out = {}
    for shape in SHAPES:
        canvas = Image.new("L", (size, size), 0)
        draw_shape(ImageDraw.Draw(canvas), shape, size / 2, size / 2, size * 0.4, 255)
        out[shape] = _crop_to_template(np.asarray(canvas) > 127)
    return out


def classify_shape(mask: np.ndarray) -> str:
    """Shape whose template has the highest soft IoU with the blob's bounding-box mask."""
    crop = _crop_to_template(mask)
    scores = {name: float(np.minimum(crop, t).sum() / np.maximum(crop, t).sum())
              for name, t in _templates().items()}
    return max(scores, key=lambda name: scores[name])


def read_image(image: Image.Image) -> Reading:
    """Report dominant foreground colour, background colour, shape class and grid position."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_index = int(np.bincount(nearest_color(border), minlength=len(_NAMES)).argmax())
    background_rgb = np.median(border[nearest_color(border) == background_index], axis=0)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2))
    blob = _largest_blob(distance > _FOREGROUND_DISTANCE)
    background = _NAMES[background_index]
    if blob.sum() < _MIN_AREA * height * width:
        return Reading(None, background, None, None)
    votes = np.bincount(nearest_color(pixels[blob]), minlength=len(_NAMES))
    votes[background_index] = 0
    ys, xs = np.nonzero(blob)
    row = min(int(3 * ys.mean() / height), 2)
    col = min(int(3 * xs.mean() / width), 2)
    return Reading(_NAMES[int(votes.argmax())], background, classify_shape(blob), _GRID[row][col])
