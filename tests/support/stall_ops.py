"""Engine operations for the stall watchdog's tests: a slow worker, and a slow model load.

The worker imports this module by name (``operation_modules``), as it does plugins' modules.
"""

from __future__ import annotations

import time

from PIL import Image

from engine.operations import OperationContext, operation
from engine.request import GenerationRequest


def _blank(request: GenerationRequest) -> list[Image.Image]:
    assert request.width is not None and request.height is not None
    return [Image.new("RGB", (request.width, request.height)) for _ in range(request.count)]


@operation("test_slow_steps")
def slow_steps(ctx: OperationContext, request: GenerationRequest) -> list[Image.Image]:
    """``params["steps"]`` steps of ``params["pause"]`` seconds, each reported: slow but alive."""
    steps = int(request.params["steps"])
    for step in range(1, steps + 1):
        time.sleep(float(request.params["pause"]))
        ctx.check_cancelled()
        ctx.progress(step, steps, None)
    return _blank(request)


@operation("test_slow_load")
def slow_load(ctx: OperationContext, request: GenerationRequest) -> list[Image.Image]:
    """Load ``params["model"]``, then stay silent ``params["warmup"]`` seconds before a step.

    The silence stands for a slow load or a first step that compiles: both count as loading.
    """
    ctx.pipeline(request.params["model"])
    time.sleep(float(request.params["warmup"]))
    ctx.check_cancelled()
    ctx.progress(1, 1, None)
    return _blank(request)
