"""The zoom plugin's settings: ``IMAGINEBOT_ZOOM_*``.

Read in the bot (a click records the inpainting model in its request) and in the engine worker
(which runs only the model configured there), so this module imports nothing from the bot.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from engine.operations import PluginSettings


class ZoomSettings(PluginSettings):
    namespace: ClassVar[str] = "zoom"

    inpaint_model: str | None = Field(
        None, description="Inpainting checkpoint for Zoom Out and Pan (a hub id from the local "
        "cache, a diffusers folder or a .safetensors file) of the same family as the images' "
        "model; without it they inpaint with the image's own model.")
