"""Super-resolution models (Real-ESRGAN, SwinIR, ...) loaded through spandrel, run in tiles.

spandrel recognises the architecture from the checkpoint's keys, so any model it supports works
from a plain .safetensors or .pth file with no code of ours per architecture. Only the worker
imports this module, and only once an upscaler model is configured.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import spandrel
import torch
from PIL import Image

from engine.request import RequestError
from plugins.upscale.tiling import run_tiled

log = logging.getLogger(__name__)

#: Input pixels per tile edge, and the context around each tile; 32 pixels hide the seams of
#: ESRGAN-family models while a 256-pixel tile of a 4x model stays well under 1 GiB.
TILE = 256
PAD = 32


@functools.lru_cache(maxsize=1)
def load_upscaler(path: str, device: str, dtype: torch.dtype) -> Any:
    """The spandrel ``ImageModelDescriptor`` on ``device``; stays loaded for the next job."""
    try:
        model = spandrel.ModelLoader().load_from_file(path)
    except Exception as error:
        log.exception("cannot load the upscaler model %s", path)
        raise RequestError("upscale_model", "the upscaler model configured on this bot cannot "
                           "be loaded; its administrators can find why in the log") from error
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise RequestError("upscale_model", f"the upscaler model configured on this bot is a "
                           f"{model.purpose} model, not an upscaler")
    unsupported = {torch.float16: not model.supports_half,
                   torch.bfloat16: not model.supports_bfloat16}
    if unsupported.get(dtype, False):
        dtype = torch.float32
    return model.to(torch.device(device), dtype).eval()


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)


def enlarge(model: Any, image: Image.Image, size: tuple[int, int], *, tile: int = TILE,
            pad: int = PAD, progress: Callable[[int, int], None] | None = None,
            ) -> Image.Image:
    """``image`` through the model, then resized to exactly ``size`` (a 4x model for 2x)."""
    if model.tiling == spandrel.ModelTiling.INTERNAL:
        tile = max(image.size)  # the model needs the whole image at once

    def apply(part: torch.Tensor) -> torch.Tensor:
        return model(part.to(model.device, model.dtype))

    output = to_image(run_tiled(apply, to_tensor(image), model.scale, tile=tile, pad=pad,
                                progress=progress))
    if output.size != size:
        output = output.resize(size, Image.Resampling.LANCZOS)
    return output
