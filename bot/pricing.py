"""What a generation costs, in one place: the queue, the buttons and the help text agree.

One formula, output pixels × denoising steps: txt2img uses the request's own size and steps
(an image prompt runs steps × strength of them); plugin operations (upscales) apply it to what
they make, through ``Plugin.prices``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings
    from engine.request import GenerationRequest


def generation_cost(width: int, height: int, steps: int, count: int, *,
                    price_per_image: int = 1, base_pixels: int = 1024 * 1024,
                    base_steps: int = 30) -> int:
    """``price_per_image`` per image up to base_pixels and base_steps, scaled up by
    pixels × steps beyond that, rounded up to whole credits for the whole request."""
    for name, value in (("width", width), ("height", height), ("steps", steps),
                        ("count", count), ("base_pixels", base_pixels),
                        ("base_steps", base_steps)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if price_per_image < 0:
        raise ValueError(f"price_per_image must not be negative, not {price_per_image}")
    base_work = base_pixels * base_steps
    work = max(width * height * steps, base_work)
    return -(-count * price_per_image * work // base_work)


def cost_for(settings: Settings, width: int, height: int, steps: int, count: int) -> int:
    """:func:`generation_cost` at the bot's configured price, base size and base steps."""
    return generation_cost(width, height, steps, count,
                           price_per_image=settings.price_per_image,
                           base_pixels=settings.price_base_pixels,
                           base_steps=settings.price_base_steps)


def request_cost(settings: Settings, request: GenerationRequest) -> int:
    """What a validated txt2img request costs: an image prompt is charged the steps its
    img2img pass runs (:func:`img2img_steps`), text to image all of them."""
    assert request.width and request.height and request.steps  # validated requests have them
    steps = request.steps
    if request.source_image is not None and request.strength is not None:
        steps = img2img_steps(steps, request.strength)
    return cost_for(settings, request.width, request.height, steps, request.count)


def img2img_steps(steps: int, strength: float) -> int:
    """The denoising steps an img2img pass of ``steps`` at ``strength`` really runs.

    diffusers runs ``int(steps * strength)`` of them (at most ``steps``); at least 1 is charged,
    so a pass is never free.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be above 0 and at most 1, not {strength}")
    return max(1, min(int(steps * strength), steps))
