"""Variations: V1–V4 and 🔄 on grids, Vary (Subtle)/(Strong) on upscaled images, 🎨 Remix."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.plugin_api import Plugin


def setup() -> Plugin:
    from plugins.variations.buttons import plugin

    return plugin
