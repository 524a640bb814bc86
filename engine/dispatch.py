"""The seam between the bot's job queue and whatever runs its jobs: one local worker process
(``engine.local.LocalEngine``) or many workers on many hosts (``engine.remote``).

Workers pull work, as AI Horde workers pop jobs: an engine offers a :class:`Slot` when one of
its workers is free, the queue picks the fairest job that slot can run, and submits it there
with its attempt number. Each job's events come back on its own stream, as from
``EngineClient.submit``, ending with exactly one Done or Failed. A ``Failed(kind="lost")`` means
the engine lost the job (its worker's lease expired, or the broker forgot it): the queue puts
it back through its SQL row, fenced by the attempt number, so that a late result of the lost
attempt is never accepted.

Light on purpose: the bot imports it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import RequestError
from engine.events import EngineEvent
from engine.families import model_info
from engine.request import GenerationRequest
from engine.settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """A free place, on one worker, for one batch.

    ``loaded`` are the models the worker has in memory now (the queue prefers a slot whose
    worker has the job's model loaded), ``models`` every model it can run.
    """

    id: str
    worker: str
    models: frozenset[str]
    loaded: frozenset[str] = frozenset()
    operations: frozenset[str] = frozenset()
    max_batch: int = 8
    max_pixels: int = 1536 * 1024

    def can_run(self, request: GenerationRequest) -> bool:
        """Whether this slot's worker offers the request's model, operation and size (an empty
        ``models`` offers any model: the local worker, which validation already checked)."""
        return ((not self.models or request.model in self.models)
                and (request.operation == "txt2img" or request.operation in self.operations)
                and (request.width or 0) * (request.height or 0) <= self.max_pixels)


@dataclass(frozen=True)
class Dispatch:
    """One job sent to a slot: its validated request and which attempt this is (1, 2, ...)."""

    request: GenerationRequest
    attempt: int


@dataclass(frozen=True)
class ModelEntry:
    """What the bot must know of a model that only workers have: enough to validate and price
    a request while no worker is online (the family's sizes, defaults and samplers)."""

    name: str
    family: str
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    extra: Mapping[str, Any] = field(default_factory=dict)


def model_entries(settings: EngineSettings) -> dict[str, ModelEntry]:
    """The allowed models of ``settings`` that can be used, as a catalogue lists them (by
    allowlist entry, with the display name members see); one that cannot is logged and left
    out. The local engine and each remote worker offer their models through it."""
    entries: dict[str, ModelEntry] = {}
    for ref in settings.allowed_models:
        try:
            info = model_info(ref, settings)
        except RequestError as error:
            log.warning("model %s is left out of the catalogue: %s", ref, error)
            continue
        entries[ref] = ModelEntry(ref, info.family.name, info.width, info.height, info.steps,
                                  info.cfg, info.sampler, {"display": info.name})
    return entries


@dataclass(frozen=True)
class Catalogue:
    """The models and operations the engine's workers offer, and how many are online now.

    Remembered by remote engines, so that it survives a moment with no worker online.
    """

    models: Mapping[str, ModelEntry]
    operations: frozenset[str]
    workers_online: int


class Engine(Protocol):
    """What the bot's job queue needs from an engine, local or remote."""

    async def acquire_slot(self) -> Slot:
        """Wait until a worker is free and return its slot; the slot is spent by ``submit``.

        The queue calls it again at once, and holds every slot it gets until a batch takes
        it: with all free workers in view it can send each job to one that has its model
        loaded. So a slot may be held a while; a worker that died meanwhile must surface as
        ``Failed(kind="lost")`` of what is submitted to it. Cancelling the call must lose
        nothing (the queue cancels it at shutdown)."""

    def release_slot(self, slot: Slot) -> None:
        """Give back a slot the queue holds and will not use (at shutdown); it may be offered
        again."""

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        """Resolve and check ``request`` (raises ``RequestError``); cheap, no worker needed."""

    def submit(self, jobs: Sequence[Dispatch], slot: Slot) -> list[AsyncIterator[EngineEvent]]:
        """Run ``jobs`` as one batch on ``slot``; one event stream per job, in order."""

    async def cancel(self, job_id: str) -> bool:
        """Stop a submitted job between steps; False if the engine does not hold it."""

    def catalogue(self) -> Catalogue: ...
