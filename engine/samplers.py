"""Sampler names to diffusers schedulers, built from the model's own scheduler config."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
)

from engine.request import RequestError

_SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_2m_sde_karras": (DPMSolverMultistepScheduler,
                            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "lcm": (LCMScheduler, {}),
    "flow_euler": (FlowMatchEulerDiscreteScheduler, {}),
}

def scheduler_overrides(sampler: str) -> tuple[Any, dict[str, Any]]:
    """The scheduler class and config overrides for a sampler name."""
    try:
        return _SCHEDULERS[sampler]
    except KeyError:
        raise RequestError("sampler", f"unknown sampler '{sampler}'") from None


def make_scheduler(sampler: str, base_config: Any, family_samplers: tuple[str, ...]) -> Any:
    """``Scheduler.from_config(model's scheduler config, overrides)`` for a sampler name."""
    if sampler not in family_samplers:
        raise RequestError("sampler", f"sampler {sampler} does not fit this model; choose one "
                           f"of {', '.join(family_samplers)}")
    cls, overrides = scheduler_overrides(sampler)
    return cls.from_config(base_config, **overrides)
