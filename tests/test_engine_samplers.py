"""The sampler table: every entry builds its scheduler, and everything else derives from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.errors import RequestError
from engine.families import FAMILIES
from engine.samplers import (
    A1111_NAMES,
    DIFFUSION_SAMPLERS,
    FLOW_SAMPLERS,
    SAMPLER_TABLE,
    SAMPLERS,
    make_scheduler,
)

BASE_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
               "beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize("sampler", SAMPLER_TABLE, ids=lambda sampler: sampler.name)
def test_every_sampler_builds_its_scheduler_with_its_options(sampler):
    scheduler = make_scheduler(sampler.name, BASE_CONFIG, (sampler.name,))
    assert type(scheduler).__name__ == sampler.scheduler
    for key, value in sampler.options:
        assert scheduler.config[key] == value


def test_names_lists_and_families_come_from_the_table():
    assert tuple(sampler.name for sampler in SAMPLER_TABLE) == SAMPLERS
    assert sorted(DIFFUSION_SAMPLERS + FLOW_SAMPLERS) == sorted(SAMPLERS)
    # parameters text is read back through these names, so they must not collide
    assert len(set(A1111_NAMES.values())) == len(SAMPLERS)
    for family in FAMILIES.values():
        assert family.sampler in family.samplers
        assert family.samplers in (DIFFUSION_SAMPLERS, FLOW_SAMPLERS)


def test_a_sampler_outside_the_family_or_the_table_is_refused():
    with pytest.raises(RequestError, match="does not fit this model"):
        make_scheduler("flow_euler", BASE_CONFIG, DIFFUSION_SAMPLERS)
    with pytest.raises(RequestError, match="unknown sampler 'nope'"):
        make_scheduler("nope", BASE_CONFIG, ("nope",))


def test_requests_and_the_table_load_without_diffusers_or_torch():
    code = ("import sys, engine.request, engine.samplers, engine.batching; "
            "print(sorted({'torch', 'diffusers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
