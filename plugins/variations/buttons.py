"""The variations plugin: V1–V4 and 🔄 on grids, Vary (Subtle)/(Strong) on upscaled images and
🎨 Remix on both. What each button asks for is in :mod:`plugins.variations.actions`."""

from __future__ import annotations

from functools import partial

from bot.plugin_api import Plugin, ResultAction
from plugins.variations.actions import GRID_KIND, SINGLE_KIND, reroll, vary
from plugins.variations.remix import remix
from plugins.variations.settings import VariationSettings

grid = frozenset({GRID_KIND})
single = frozenset({SINGLE_KIND})
plugin = Plugin(
    name="variations",
    description="V1–V4 and Vary (Subtle/Strong) make a new grid around one image, 🔄 draws "
                "new seeds, 🎨 Remix edits the prompt first",
    api_versions=range(1, 2),
    settings=VariationSettings,
    actions=[
        ResultAction(key="v", label="V{n}", per_image=True, row=1, order=0,
                     callback=partial(vary, strength="subtle"), kinds=grid),
        ResultAction(key="reroll", emoji="🔄", row=0, order=20, callback=reroll, kinds=grid),
        ResultAction(key="subtle", label="Vary (Subtle)", row=0, order=0,
                     callback=partial(vary, strength="subtle"), kinds=single),
        ResultAction(key="strong", label="Vary (Strong)", row=0, order=1,
                     callback=partial(vary, strength="strong"), kinds=single),
        ResultAction(key="remix", label="Remix", emoji="🎨", row=1, order=10, callback=remix,
                     kinds=grid | single),
    ],
)
