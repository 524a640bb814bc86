"""What a zoom costs: a generation of its output's pixels at its full steps.

The inpainting pass runs at strength 1, so every step runs, on the whole output canvas (the
pipeline denoises all of it; only the result's masked part is kept). A Zoom Out therefore costs
what a txt2img of the source image's size costs, a pan what one of the larger canvas costs.
"""

from __future__ import annotations

from bot.plugin_api import Bot, cost_for
from engine.request import GenerationRequest


def zoom_price(bot: Bot, request: GenerationRequest) -> int:
    """The credits of a zoom request (``buttons.zoom_request``), asked before it is queued."""
    assert request.width and request.height and request.steps  # validated requests have them
    return cost_for(bot.settings, request.width, request.height, request.steps, request.count)
