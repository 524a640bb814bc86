"""The ``jobs`` table: every generation with its parameters, state, Discord ids and result.

A job row is the whole truth about a job, so the queue, its buttons and its message can all be
rebuilt from it after a restart.
"""

from __future__ import annotations

import enum
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text
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
    hold_id: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(Integer)
    application_id: Mapped[int] = mapped_column(BigInteger)
    interaction_id: Mapped[int] = mapped_column(BigInteger)
    #: Valid 15 minutes after ``created_at``; cleared once the job is finished.
    interaction_token: Mapped[str | None] = mapped_column(Text)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    upload_limit: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: {"images": [{"path", "seed", "width", "height"}], "grid": path | None, "seconds",
    #: "metadata"}; set when the engine is done, before delivery.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)

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


class BotState(Base):
    """Small named values the bot keeps between runs (the synced commands' hash)."""

    __tablename__ = "bot_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
