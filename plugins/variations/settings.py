"""The variations plugin's settings: ``IMAGINEBOT_VARIATIONS_*``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import Field

from bot.plugin_api import PluginSettings


class VariationSettings(PluginSettings):
    namespace: ClassVar[str] = "variations"
    #: The core settings these were before they moved into the plugin.
    deprecated_names: ClassVar[Mapping[str, str]] = {"variation_subtle": "subtle",
                                                     "variation_strong": "strong"}

    subtle: float = Field(0.25, gt=0, le=1, description="Variation strength of V1–V4 and Vary "
                          "(Subtle).")
    strong: float = Field(0.6, gt=0, le=1, description="Variation strength of Vary (Strong).")
