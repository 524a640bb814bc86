"""Zoom Out (1.5x, 2x) and Pan (⬅️ ➡️ ⬆️ ⬇️) on upscaled images: outpainting, as on Midjourney.

This module stays free of bot imports: the engine worker imports ``plugins.zoom.engine_ops``,
which imports this package first, and the worker must not load discord.py or the database
layer. The buttons live in :mod:`plugins.zoom.buttons`, loaded by :func:`setup` in the bot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bot.plugin_api import Plugin

#: The engine operation name; its params are described in :mod:`plugins.zoom.engine_ops`.
OPERATION = "zoom"
#: The job kind of zoomed and panned images, which picks the buttons of their messages.
KIND = "zoom"
#: "out" zooms out (the image shrinks into the middle of a larger canvas); the others pan.
Direction = Literal["out", "left", "right", "up", "down"]
DIRECTIONS: tuple[Direction, ...] = ("out", "left", "right", "up", "down")
#: The pan buttons, left to right.
PANS: tuple[tuple[Direction, str], ...] = (("left", "⬅️"), ("right", "➡️"), ("up", "⬆️"),
                                           ("down", "⬇️"))
#: The canvas over the image, on each side, of the two Zoom Out buttons.
ZOOM_FACTORS = (2.0, 1.5)
#: The canvas over the image along the panned axis: a pan adds half the image on that side.
PAN_FACTOR = 1.5


def setup() -> Plugin:
    from plugins.zoom.buttons import plugin

    return plugin
