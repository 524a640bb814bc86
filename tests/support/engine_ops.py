"""An engine operation module for the client tests; the worker imports it at start.

It also counts VAE decodes (one line per call in the file named by ``ENGINE_TEST_DECODE_LOG``)
so a test can tell that a cancelled job was never decoded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL
from PIL import Image

from engine.operations import OperationContext, operation
from engine.request import GenerationRequest

DECODE_LOG = "ENGINE_TEST_DECODE_LOG"

_decode = AutoencoderKL.decode


def _counting_decode(self: AutoencoderKL, *args: Any, **kwargs: Any) -> Any:
    if log := os.environ.get(DECODE_LOG):
        with open(log, "a") as file:
            file.write("decode\n")
    return _decode(self, *args, **kwargs)


AutoencoderKL.decode = _counting_decode  # type: ignore[method-assign]


@operation("test_solid")
def solid(ctx: OperationContext, request: GenerationRequest) -> list[Image.Image]:
    """Solid images of params["color"]; records the process id that ran it."""
    Path(request.params["pid_file"]).write_text(str(os.getpid()))
    for step in range(1, 4):
        ctx.check_cancelled()
        ctx.progress(step, 3, None)
    assert request.width is not None and request.height is not None
    color = tuple(request.params["color"])
    return [Image.new("RGB", (request.width, request.height), color)
            for _ in range(request.count)]
