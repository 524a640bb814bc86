"""Running an image-to-image model tile by tile, so memory stays bounded on large images.

Each tile is cut with ``pad`` extra pixels of context on every side and only its core is kept:
when ``pad`` covers the model's receptive field, the stitched result equals one run on the
whole image, without visible seams.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: ``fn(tile) -> enlarged tile``: (1, C, h, w) -> (1, C', h * scale, w * scale).
ImageFn = Callable[[torch.Tensor], torch.Tensor]
#: Called after each tile with (tiles done, tiles in all).
TileProgress = Callable[[int, int], None]


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) cores of at most ``tile`` pixels covering ``length``."""
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def run_tiled(fn: ImageFn, image: torch.Tensor, scale: int, *, tile: int, pad: int,
              progress: TileProgress | None = None) -> torch.Tensor:
    """``fn(image)`` computed tile by tile and assembled on the CPU in float32."""
    if tile < 1 or pad < 0:
        raise ValueError("tile must be positive and pad not negative")
    _, _, height, width = image.shape
    rows, columns = tile_spans(height, tile), tile_spans(width, tile)
    total = len(rows) * len(columns)
    output: torch.Tensor | None = None
    done = 0
    for top, bottom in rows:
        for left, right in columns:
            y0, y1 = max(top - pad, 0), min(bottom + pad, height)
            x0, x1 = max(left - pad, 0), min(right + pad, width)
            result = fn(image[:, :, y0:y1, x0:x1])
            core = result[:, :, (top - y0) * scale:(bottom - y0) * scale,
                          (left - x0) * scale:(right - x0) * scale]
            if output is None:
                output = torch.zeros(1, result.shape[1], height * scale, width * scale)
            output[:, :, top * scale:bottom * scale, left * scale:right * scale] = \
                core.to("cpu", torch.float32)
            done += 1
            if progress is not None:
                progress(done, total)
    assert output is not None  # an image has at least one pixel, so at least one tile
    return output
