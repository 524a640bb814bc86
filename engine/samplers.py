"""Every sampler imaginebot offers, in one table, and the diffusers schedulers they build.

The table names each scheduler class as a string, so validation, PNG metadata, the model
families and the bot's command choices all read it without importing diffusers (and with it
torch); only :func:`make_scheduler`, which runs inside the worker, imports diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError


@dataclass(frozen=True)
class Sampler:
    """One sampler: its name here, elsewhere, and the diffusers scheduler that implements it."""

    name: str
    #: The name AUTOMATIC1111 writes in its "parameters" text.
    a1111_name: str
    #: A diffusers scheduler class name, built from the model's own scheduler config.
    scheduler: str
    #: Config overrides on top of the model's scheduler config, as (key, value) pairs.
    options: tuple[tuple[str, Any], ...] = ()
    #: For rectified-flow models (FLUX, SD3) instead of noise-prediction (epsilon / v) ones.
    flow_matching: bool = False


_DPMPP = (("algorithm_type", "dpmsolver++"),)
_KARRAS = (("use_karras_sigmas", True),)

SAMPLER_TABLE: tuple[Sampler, ...] = (
    Sampler("ddim", "DDIM", "DDIMScheduler"),
    Sampler("ddpm", "DDPM", "DDPMScheduler"),
    Sampler("euler", "Euler", "EulerDiscreteScheduler"),
    Sampler("euler_a", "Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP),
    Sampler("dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler",
            _DPMPP + _KARRAS),
    Sampler("dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
            (("algorithm_type", "sde-dpmsolver++"), *_KARRAS)),
    Sampler("lcm", "LCM", "LCMScheduler"),
    Sampler("flow_euler", "Euler (flow)", "FlowMatchEulerDiscreteScheduler",
            flow_matching=True),
)

_BY_NAME = {sampler.name: sampler for sampler in SAMPLER_TABLE}

#: Every sampler name, in the table's order.
SAMPLERS = tuple(_BY_NAME)
#: Names AUTOMATIC1111 writes in its "parameters" text, for each sampler.
A1111_NAMES = {sampler.name: sampler.a1111_name for sampler in SAMPLER_TABLE}
#: Samplers for noise-prediction (epsilon / v) models.
DIFFUSION_SAMPLERS = tuple(s.name for s in SAMPLER_TABLE if not s.flow_matching)
#: Samplers for rectified-flow models (FLUX, SD3).
FLOW_SAMPLERS = tuple(s.name for s in SAMPLER_TABLE if s.flow_matching)


def sampler_named(name: str) -> Sampler:
    """The table's entry for a sampler name; a RequestError for names it does not have."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise RequestError("sampler", f"unknown sampler '{name}'") from None


def make_scheduler(name: str, base_config: Any, family_samplers: tuple[str, ...]) -> Any:
    """``Scheduler.from_config(model's scheduler config, overrides)`` for a sampler name."""
    if name not in family_samplers:
        raise RequestError("sampler", f"sampler {name} does not fit this model; choose one "
                           f"of {', '.join(family_samplers)}")
    sampler = sampler_named(name)
    import diffusers  # torch comes with it: only the worker builds schedulers

    return getattr(diffusers, sampler.scheduler).from_config(base_config,
                                                             **dict(sampler.options))
