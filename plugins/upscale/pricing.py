"""What an upscale costs: the pixels it makes times the steps it runs, plus any remake it needs.

It mirrors :mod:`plugins.upscale.engine_ops` (which the bot does not import: it registers the
operation, a worker's business): each step up to ``scale`` is one enlargement at that size, and
a source whose file is gone is made again first, a txt2img at the request's size and then each
step below ``scale``. The price is asked before the job is queued, so the queued message shows
all of it.
"""

from __future__ import annotations

from pathlib import Path

from bot.plugin_api import Bot, cost_for, img2img_steps, plugin_settings
from engine.request import GenerationRequest
from plugins.upscale import STEP, hires_steps
from plugins.upscale.settings import UpscaleSettings


def upscale_price(bot: Bot, request: GenerationRequest) -> int:
    """The credits of an upscale request (``buttons.upscale_request``), remake included."""
    settings = plugin_settings(bot, UpscaleSettings)
    scale = int(request.params["scale"])
    cost = enlarge_price(bot, settings, request, scale)
    path = request.params.get("image_path")
    if not (isinstance(path, str) and Path(path).is_file()):
        cost += remake_price(bot, settings, request, scale // STEP)
    return cost


def remake_price(bot: Bot, settings: UpscaleSettings, request: GenerationRequest,
                 scale: int) -> int:
    """The image at ``scale`` made again: the txt2img, then each enlargement up to ``scale``."""
    assert request.width and request.height and request.steps  # validated requests have them
    if scale == 1:
        return cost_for(bot.settings, request.width, request.height, request.steps, 1)
    return (remake_price(bot, settings, request, scale // STEP)
            + enlarge_price(bot, settings, request, scale))


def enlarge_price(bot: Bot, settings: UpscaleSettings, request: GenerationRequest,
                  scale: int) -> int:
    """One enlargement to ``scale`` times the request's size.

    A hires fix is an img2img pass of :func:`~plugins.upscale.hires_steps` steps at the strength
    (engine_ops.hires_fix). An upscaler model runs no diffusion steps; it is charged as one step
    at the output size, which is the base price per image for any size the bot allows.
    """
    assert request.width and request.height and request.steps  # validated requests have them
    if settings.model is not None:
        steps = 1
    else:
        strength = float(request.params["strength"])
        steps = img2img_steps(hires_steps(request.steps, strength), strength)
    return cost_for(bot.settings, request.width * scale, request.height * scale, steps, 1)
