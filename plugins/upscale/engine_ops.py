"""The "upscale" engine operation, run by the worker next to the loaded pipelines.

With ``IMAGINEBOT_UPSCALE_MODEL`` set, a super-resolution model enlarges the image; otherwise the
diffusion model itself does, as a "hires fix": resize, then a low-strength img2img pass with
the image's own prompt and seed. A source image whose file is gone is made again from the
request, which is the count-1 request of that image (the engine's reproducibility contract),
at the reference tier: plain diffusers' kernels, whatever the worker's speed settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from engine.operations import OperationContext, operation
from engine.request import GenerationRequest, RequestError
from plugins.upscale import OPERATION, STEP, hires_steps
from plugins.upscale.settings import UpscaleSettings

log = logging.getLogger(__name__)


def scale_of(request: GenerationRequest) -> int:
    scale = request.params.get("scale")
    if not isinstance(scale, int) or scale < STEP or not _is_power(scale):
        raise RequestError("scale", f"upscale scale must be a power of {STEP}, at least {STEP}")
    return scale


def _is_power(scale: int) -> bool:
    while scale % STEP == 0:
        scale //= STEP
    return scale == 1


def hires_strength(request: GenerationRequest) -> float:
    strength = request.params.get("strength")
    if not isinstance(strength, int | float) or not 0 < strength <= 1:
        raise RequestError("strength", "upscale strength must be above 0 and at most 1")
    return float(strength)


@operation(OPERATION)
def upscale(ctx: OperationContext, request: GenerationRequest) -> list[Image.Image]:
    scale = scale_of(request)
    return [enlarge(ctx, request, source_image(ctx, request, scale), scale)]


def source_image(ctx: OperationContext, request: GenerationRequest, scale: int) -> Image.Image:
    """The image at ``scale / STEP``: its saved file when it can be read, else made again."""
    path = request.params.get("image_path")
    if isinstance(path, str) and _is_output(Path(path), ctx.settings.output_dir):
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError:
            log.warning("cannot read %s; making the image again", path, exc_info=True)
    with ctx.reference_kernels(request.model):
        return remake(ctx, request, scale // STEP)


def _is_output(path: Path, output_dir: Path) -> bool:
    """Only the engine's own outputs are read: the path came through the database."""
    resolved = path.resolve()
    return resolved.is_relative_to(output_dir.resolve()) and resolved.is_file()


def remake(ctx: OperationContext, request: GenerationRequest, scale: int) -> Image.Image:
    """The image at ``scale`` as the earlier jobs made it: txt2img, then each upscale step."""
    if scale == 1:
        alone = request.model_copy(update={"operation": "txt2img", "params": {}, "count": 1})
        return ctx.runner.txt2img([alone], ctx.progress, ctx.cancelled)[0].images[0]
    return enlarge(ctx, request, remake(ctx, request, scale // STEP), scale)


def enlarge(ctx: OperationContext, request: GenerationRequest, image: Image.Image,
            scale: int) -> Image.Image:
    """``image`` at ``scale`` times the request's size."""
    assert request.width and request.height  # validated requests have them
    size = (request.width * scale, request.height * scale)
    ctx.check_cancelled()
    model_path = ctx.plugin_settings(UpscaleSettings).model
    if model_path is not None:
        from plugins.upscale import upscalers

        model = upscalers.load_upscaler(str(model_path), str(ctx.device), ctx.dtype)

        def tile_done(done: int, total: int) -> None:
            ctx.progress(done, total, None)
            ctx.check_cancelled()

        return upscalers.enlarge(model, image, size, progress=tile_done)
    return hires_fix(ctx, request, image.resize(size, Image.Resampling.LANCZOS),
                     hires_strength(request))


def hires_fix(ctx: OperationContext, request: GenerationRequest, image: Image.Image,
              strength: float) -> Image.Image:
    """A low-strength img2img pass that adds detail at the new size.

    img2img runs ``int(steps * strength)`` steps, so there are enough steps for at least one.
    """
    steps = hires_steps(request.steps, strength)
    alone = request.model_copy(update={"count": 1, "steps": steps})
    return ctx.runner.img2img(alone, image, strength, ctx.progress, ctx.cancelled)[0]
