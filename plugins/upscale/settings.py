"""The upscale plugin's settings: ``IMAGINEBOT_UPSCALE_*``.

Read in the bot (the size limit and the hires-fix strength go into each request) and in the
engine worker (the upscaler model), so this module imports nothing from the bot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from engine.operations import PluginSettings


class UpscaleSettings(PluginSettings):
    namespace: ClassVar[str] = "upscale"
    #: The core settings these were before they moved into the plugin.
    deprecated_names: ClassVar[Mapping[str, str]] = {"upscaler_model": "model",
                                                     "hires_strength": "hires_strength"}

    model: Path | None = Field(None, description="ESRGAN-family .safetensors/.pth file for "
                               "upscaling; without it upscales use the diffusion model (hires "
                               "fix).")
    max_pixels: int = Field(4 * 1536 * 1024, ge=64 * 64, description="Largest image an upscale "
                            "may produce.")
    hires_strength: float = Field(0.35, gt=0, le=1, description="img2img strength of an upscale "
                                  "without an upscaler model.")
