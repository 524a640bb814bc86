"""Helpers of the engine tests (tests/test_engine_client.py and tests/test_scaleout_contract.py):
both run the same checks, one on EngineClient alone, the other through either engine, so they
build requests, drain event streams and compare saved images the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from PIL import Image

from engine.events import EngineEvent
from engine.request import GenerationRequest

#: Seconds a test waits for a tiny model's job (a shared CI machine can be slow).
TIMEOUT = 120


def request(**fields: object) -> GenerationRequest:
    """A cheap valid request (two euler steps, one image, seed 1); ``fields`` override it."""
    values: dict[str, object] = {"prompt": "a red circle", "steps": 2, "count": 1, "seed": 1,
                                 "sampler": "euler"}
    return GenerationRequest(**{**values, **fields})


async def collect(stream: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    """All of a job's events, up to its final one; a hung job fails the test after TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in stream]


def decodes(log: Path) -> int:
    """How many VAE decodes tests.support.engine_ops logged (a cancelled job must add none)."""
    return len(log.read_text().splitlines()) if log.exists() else 0


def pixels(path: Path) -> np.ndarray:
    """An image's RGB pixels as signed ints, so that two images can be subtracted."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
