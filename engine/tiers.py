"""Contract tiers: what each speed setting may cost in exactness, as data without torch.

The engine's settings validate against this table when they are read, in the bot process too,
which has no torch; :mod:`engine.speed` applies the settings in the worker and says the same
refusal there (settings built without validation reach the worker too). docs/engine.md
("Speed settings and contract tiers") describes each tier and each row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Tier = Literal["reference", "fast", "lossy"]
#: The tiers from most to least exact: a setting runs only at its tier or a later one.
TIERS: tuple[Tier, ...] = ("reference", "fast", "lossy")

#: setting -> value -> the tier it needs. ``attention=auto`` takes whatever the tier allows
#: (cuDNN attention at ``fast`` on CUDA, PyTorch's plain SDPA otherwise), so it fits every tier.
SETTING_TIERS: dict[str, dict[str, Tier]] = {
    "compile": {"off": "reference", "default": "fast", "max": "fast"},
    "attention": {"auto": "reference", "native": "reference", "cudnn": "fast", "flash": "fast",
                  "flash3": "fast"},
    "quantize": {"off": "reference", "fp8": "lossy"},
}


def rank(tier: Tier) -> int:
    """The tier's place in :data:`TIERS`: 0 is exact."""
    return TIERS.index(tier)


def needed_tiers(values: Mapping[str, str]) -> list[Tier]:
    """The tier each setting in ``values`` (setting -> value) needs, in order."""
    return [SETTING_TIERS[setting][value] for setting, value in values.items()]


def tier_refusal(tier: Tier, values: Mapping[str, str]) -> str | None:
    """One sentence for the first setting in ``values`` above ``tier``; None when all fit."""
    for (setting, value), needs in zip(values.items(), needed_tiers(values), strict=True):
        if rank(needs) > rank(tier):
            exact = next(v for v, t in SETTING_TIERS[setting].items() if t == "reference")
            return (f"IMAGINEBOT_{setting.upper()}={value} is in the {needs} tier, above "
                    f"IMAGINEBOT_TIER={tier}: set IMAGINEBOT_TIER={needs}, or "
                    f"IMAGINEBOT_{setting.upper()}={exact}")
    return None
