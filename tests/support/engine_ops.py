"""An engine operation module for the client tests; the worker imports it at start.

It also counts VAE decodes (one line per call in the file named by ``ENGINE_TEST_DECODE_LOG``)
so a test can tell that a cancelled job was never decoded, and kills the worker (SIGKILL on
itself, as a segfault or the host's OOM killer would) when a txt2img batch holds a prompt
containing ``CRASH_PROMPT``, so the bot's tests can crash it through /imagine.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL
from PIL import Image

from engine.operations import OperationContext, operation
from engine.request import GenerationRequest
from engine.runner import Runner

DECODE_LOG = "ENGINE_TEST_DECODE_LOG"
CRASH_PROMPT = "crash the worker"

_decode = AutoencoderKL.decode


def _counting_decode(self: AutoencoderKL, *args: Any, **kwargs: Any) -> Any:
    if log := os.environ.get(DECODE_LOG):
        with open(log, "a") as file:
            file.write("decode\n")
    return _decode(self, *args, **kwargs)


AutoencoderKL.decode = _counting_decode  # type: ignore[method-assign]

_txt2img = Runner.txt2img


def _crashing_txt2img(self: Runner, requests: Sequence[GenerationRequest], *args: Any,
                      **kwargs: Any) -> Any:
    if any(CRASH_PROMPT in request.prompt for request in requests):
        os.kill(os.getpid(), signal.SIGKILL)
    return _txt2img(self, requests, *args, **kwargs)


Runner.txt2img = _crashing_txt2img  # type: ignore[method-assign]


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
