"""Events the worker process sends back for a job.

Plain frozen dataclasses so they pickle cheaply over a multiprocessing pipe; previews travel as
small PNG bytes rather than tensors or PIL images.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: ``crashed``: the worker process died; ``stalled``: it went silent and the client killed it;
#: ``lost``: a remote engine lost the job (its worker's lease expired, or the broker forgot it),
#: and the queue decides whether it runs again (see engine.dispatch).
FailureKind = Literal["invalid", "cancelled", "crashed", "stalled", "error", "lost"]


@dataclass(frozen=True)
class Queued:
    job_id: str
    #: Jobs ahead of this one in the engine (0 = it runs next).
    position: int


@dataclass(frozen=True)
class Progress:
    job_id: str
    step: int
    total: int
    preview: bytes | None = None


@dataclass(frozen=True)
class ImageResult:
    path: Path
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class Done:
    job_id: str
    images: list[ImageResult]
    grid: Path | None
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    job_id: str
    reason: str
    kind: FailureKind


EngineEvent = Queued | Progress | Done | Failed


async def until_final(events: asyncio.Queue[EngineEvent]) -> AsyncIterator[EngineEvent]:
    """Yield a job's events as they arrive, ending after its Done or Failed. Both engines keep
    one queue per job and hand its caller this stream; nothing comes after the final event."""
    while True:
        event = await events.get()
        yield event
        if isinstance(event, Done | Failed):
            return
