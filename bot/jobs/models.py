"""The ``jobs`` table: every generation with its parameters, state, Discord ids and result.

A job row is the whole truth about a job, so the queue, its buttons and its message can all be
rebuilt from it after a restart.
"""

from __future__ import annotations

import enum
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from bot.database import Base
from bot.ledger.models import UTCDateTime
from engine.request import GenerationRequest


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED})


class EndReason(enum.StrEnum):
    """Why a job ended without being delivered; the presenter turns each into a sentence."""

    CANCELLED = "cancelled"
    CANCELLED_BY_ADMIN = "cancelled_by_admin"
    #: Caught running by restarts MAX_ATTEMPTS times.
    RESTART_LIMIT = "restart_limit"
    #: Its hold expired (or was released) while it waited.
    HOLD_EXPIRED = "hold_expired"
    #: The same request has crashed the worker too often since it was queued.
    QUARANTINED = "quarantined"
    #: The request no longer validates (a model or operation is gone).
    NO_LONGER_VALID = "no_longer_valid"
    #: The engine refused it while running it.
    INVALID = "invalid"
    #: The worker process died.
    CRASHED = "crashed"
    #: The worker went silent and was killed by the engine's watchdog.
    STALLED = "stalled"
    #: The engine lost it (its worker went away) on each of its MAX_ATTEMPTS attempts.
    LOST = "lost"
    #: The engine reported an error.
    FAILED = "failed"
    #: Something in the bot went wrong (lost track of the engine, the batch kept failing).
    ERROR = "error"
    #: The result exists but cannot be shown (detail: the presenter's own sentence).
    UNDELIVERABLE = "undeliverable"
    #: Posting the result failed unexpectedly.
    DELIVERY_FAILED = "delivery_failed"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: ``{action}:{interaction id}``: the same interaction delivered twice makes one job.
    request_key: Mapped[str] = mapped_column(String(120), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    #: What the result is ("imagine", "upscale", ...); picks the result buttons.
    kind: Mapped[str] = mapped_column(String(40))
    #: What started it ("gen" for /imagine, "{namespace}:{action}" for a button).
    action: Mapped[str] = mapped_column(String(60))
    owner_id: Mapped[int] = mapped_column(BigInteger, index=True)
    parent_job_id: Mapped[str | None] = mapped_column(String(32))
    #: The validated GenerationRequest as JSON (seed drawn, sizes snapped).
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The credits held for it; None for a free job (a price of 0), which holds nothing.
    hold_id: Mapped[int | None] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(Integer)
    application_id: Mapped[int] = mapped_column(BigInteger)
    interaction_id: Mapped[int] = mapped_column(BigInteger)
    #: Valid 15 minutes after ``created_at``; cleared once the job is finished.
    interaction_token: Mapped[str | None] = mapped_column(Text)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The message that shows the result, written the moment Discord returned it: from then
    #: on the result is posted, and a restart captures the hold instead of posting it again.
    result_message_id: Mapped[int | None] = mapped_column(BigInteger)
    upload_limit: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: {"images": [{"path", "seed", "width", "height"}], "grid": path | None, "seconds",
    #: "metadata"}; set when the engine is done, before delivery.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: An EndReason once the job failed or was cancelled.
    end_reason: Mapped[str | None] = mapped_column(String(24))
    #: Technical detail of the ending, for administrators and logs (never shown to users).
    error: Mapped[str | None] = mapped_column(Text)
    #: Delivered, but its hold could not be captured (it had expired or been released).
    delivered_free: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    @property
    def request(self) -> GenerationRequest:
        return GenerationRequest.model_validate(self.params)

    @property
    def image_count(self) -> int:
        return len(self.result["images"]) if self.result else int(self.params.get("count", 1))

    @property
    def image_paths(self) -> list[Path]:
        return [Path(image["path"]) for image in self.result["images"]] if self.result else []

    @property
    def seeds(self) -> list[int]:
        return [int(image["seed"]) for image in self.result["images"]] if self.result else []

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.state} owner={self.owner_id}>"


class JobCrash(Base):
    """How often one request (by :func:`bot.jobs.quarantine.request_digest`) was in a batch
    that crashed or stalled the worker; past the limit the request is refused."""

    __tablename__ = "job_crashes"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    crashes: Mapped[int] = mapped_column(Integer)
    last_job_id: Mapped[str] = mapped_column(String(32))
    last_crash_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BotState(Base):
    """Small named values the bot keeps between runs (the synced commands' hash)."""

    __tablename__ = "bot_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
