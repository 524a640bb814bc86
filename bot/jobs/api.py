"""What the job queue exchanges with the rest of the bot: what it is given (a NewJob, the
ledger, an observer; the engine is ``engine.dispatch.Engine``), and how it answers (a refusal,
an ending), so that callers and fakes need not import the queue's machinery."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from bot.jobs.models import EndReason, Job, JobState
from bot.ledger import HoldInfo
from engine.events import Progress
from engine.request import GenerationRequest


class Refusal(enum.StrEnum):
    CLOSING = "closing"
    USER_LIMIT = "user_limit"
    GLOBAL_LIMIT = "global_limit"
    #: The same request crashed the worker ``count`` times.
    QUARANTINED = "quarantined"


class QueueRefusal(Exception):
    """The queue takes no such job now; ``count`` is the limit (or crashes) that refused it."""

    def __init__(self, reason: Refusal, count: int = 0) -> None:
        super().__init__(f"{reason} ({count})")
        self.reason = reason
        self.count = count


@dataclass(frozen=True)
class Ending:
    """How a job ended without delivery; ``detail`` is technical, ``actor_id`` who cancelled."""

    reason: EndReason
    detail: str | None = None
    actor_id: int | None = None

    @property
    def state(self) -> JobState:
        cancelled = self.reason in (EndReason.CANCELLED, EndReason.CANCELLED_BY_ADMIN)
        return JobState.CANCELLED if cancelled else JobState.FAILED


class Ledger(Protocol):
    """The part of ``bot.ledger.Ledger`` the queue uses."""

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    async def hold(self, user_id: int, amount: int, key: str, *,
                   connection: AsyncConnection | None = None) -> int: ...

    async def capture(self, hold_id: int) -> bool: ...

    async def release(self, hold_id: int) -> bool: ...

    async def hold_status(self, hold_id: int) -> str: ...

    async def unresolved_holds(self, *, created_before: datetime) -> Sequence[HoldInfo]: ...


class JobObserver(Protocol):
    """Shows a job's life to its user; errors raised here are logged, never fatal."""

    async def resumed(self, job: Job, position: int) -> None:
        """A queued job picked up again after a restart (or put back at shutdown)."""

    async def paused(self, job: Job) -> None:
        """A running job stopped by the shutdown; it runs again after the restart."""

    async def requeued(self, job: Job, position: int) -> None:
        """A running job that the engine lost (its worker went away), queued again."""

    async def moved(self, job: Job, position: int) -> None:
        """A queued job's place changed because jobs ahead of it started or left."""

    async def started(self, job: Job) -> None: ...

    async def progress(self, job: Job, event: Progress) -> None: ...

    async def deliver(self, job: Job) -> int:
        """Post the result and return the id of the message that shows it, as soon as Discord
        has returned it (the queue records it at once); raise :class:`DeliveryError` when it
        cannot be delivered. Called again after a crash that came before that record, so
        posting twice must leave one message: edit the same one, or post with a nonce."""

    async def ended(self, job: Job, ending: Ending) -> None:
        """The job failed or was cancelled, for the reason in ``ending``."""


class DeliveryError(Exception):
    """The result exists but cannot be shown (too large even re-encoded, message gone...)."""


@dataclass(frozen=True)
class NewJob:
    """Everything a job row needs that the caller knows (start_generation fills it)."""

    request: GenerationRequest
    kind: str
    action: str
    owner_id: int
    cost: int
    application_id: int
    interaction_id: int
    interaction_token: str
    guild_id: int | None
    channel_id: int
    upload_limit: int
    parent_job_id: str | None = None

    @property
    def request_key(self) -> str:
        """The job row's key and its hold's idempotency key alike."""
        return f"{self.action}:{self.interaction_id}"
