"""The "zoom" engine operation: outpainting with diffusers' inpainting pipeline.

The source image goes into its box on a larger canvas (:mod:`plugins.zoom.geometry`), the
rest is masked, and ``AutoPipelineForInpainting.from_pipe`` on the loaded pipeline paints it
(same weights, no second copy in memory), or the inpainting checkpoint the admin configured
(``IMAGINEBOT_ZOOM_INPAINT_MODEL``), which blends new areas in better. Image i is that
pipeline's output with ``generator=torch.Generator("cpu").manual_seed(S + i)``, strength 1
(the new area starts from pure noise), the source job's prompt, negative prompt, steps, CFG and
sampler, read as txt2img reads them (LoRAs, embeddings, weights: ``ctx.prompt_kwargs``); then
the box gets the source's own pixels back.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.operations import OperationContext, operation
from engine.outputs import operation_parameters
from engine.request import GenerationRequest, RequestError
from plugins.zoom import OPERATION
from plugins.zoom.geometry import box_size, keep_source, place
from plugins.zoom.move import Move, digest
from plugins.zoom.settings import ZoomSettings


@operation(OPERATION)
def zoom(ctx: OperationContext, request: GenerationRequest) -> list[Image.Image]:
    move = Move.of(request)
    plan = move.plan(request)
    canvas, mask = place(source_image(ctx, move), plan)
    ctx.check_cancelled()
    painted = inpaint(ctx, request, inpaint_model(ctx, request, move), canvas, mask)
    return [keep_source(image, canvas, plan) for image in painted]


def source_image(ctx: OperationContext, move: Move) -> Image.Image:
    """The recorded source image, if its bytes are still the ones the click saw."""
    path = Path(move.image_path).resolve()
    # Only the engine's own outputs are read: the path came through the database.
    if path.is_relative_to(ctx.settings.output_dir.resolve()) and path.is_file():
        data = path.read_bytes()
        if digest(data) == move.image_sha256:
            return Image.open(io.BytesIO(data)).convert("RGB")
    raise RequestError("image", "the image to zoom or pan is no longer on the server, or has "
                       "changed")


def inpaint_model(ctx: OperationContext, request: GenerationRequest, move: Move) -> str:
    """The model that paints: the recorded inpainting checkpoint, else the image's own."""
    if move.inpaint_model is None:
        return request.model
    if move.inpaint_model != ctx.plugin_settings(ZoomSettings).inpaint_model:
        raise RequestError("inpaint_model", "the inpainting model this zoom was asked for is "
                           "no longer configured on this bot")
    own = ctx.runner.model(request.model).info.family.name
    family = ctx.runner.model(move.inpaint_model).info.family.name
    if family != own:
        raise RequestError("inpaint_model", f"the inpainting model configured for zoom is a "
                           f"{family} model and this image was made by a {own} model")
    return move.inpaint_model


def inpaint(ctx: OperationContext, request: GenerationRequest, model_ref: str,
            canvas: Image.Image, mask: Image.Image) -> Sequence[Image.Image]:
    """diffusers' inpainting pipeline, made from the loaded ``model_ref``, on the canvas."""
    from diffusers import AutoPipelineForInpainting

    loaded = ctx.runner.model(model_ref)
    pipe = AutoPipelineForInpainting.from_pipe(loaded.pipeline)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ctx.scheduler(model_ref, request.sampler)
    steps = request.steps or loaded.info.steps
    seed = request.seed or 0

    def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        ctx.check_cancelled()
        ctx.progress(i + 1, steps, None)
        return {}

    width, height = canvas.size
    kwargs: dict[str, Any] = {
        **ctx.prompt_kwargs(model_ref, pipe, request), "image": canvas, "mask_image": mask,
        "strength": 1.0, "width": width, "height": height, "num_inference_steps": steps,
        "guidance_scale": loaded.info.cfg if request.cfg is None else request.cfg,
        "generator": [torch.Generator("cpu").manual_seed(seed + i)
                      for i in range(request.count)],
        "callback_on_step_end": on_step_end,
    }
    return list(pipe(**kwargs).images)


@operation_parameters(OPERATION)
def parameters(request: GenerationRequest) -> list[tuple[str, object]]:
    """What a zoomed PNG records besides the source job's settings (its Size is the output)."""
    move = Move.of(request)
    (left, top, *_), (width, height) = move.box, box_size(move.box)
    fields: list[tuple[str, object]] = [
        ("Zoom out", f"{move.factor:g}") if move.direction == "out"
        else ("Pan", f"{move.direction} {move.factor:g}"),
        ("Outpaint mask", f"outside {width}x{height}+{left}+{top}"),
        ("Source image hash", move.image_sha256),
    ]
    if move.inpaint_model is not None:
        fields.append(("Inpaint model", Path(move.inpaint_model).name))
    return fields
