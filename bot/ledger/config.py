"""The ledger's own settings, so ``imaginebot credits`` and the ledger stand alone.

They are read like all of imaginebot's settings (``IMAGINEBOT_*`` variables, then
``imaginebot.toml``, through :class:`imaginebot_common.settings.FileSettings`);
``bot.settings.Settings`` inherits these fields rather than declaring them again.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from bot.ledger.models import MAX_AMOUNT
from bot.ledger.service import Clock, Ledger
from imaginebot_common.settings import FileSettings


class LedgerSettings(FileSettings):
    database_url: str = Field("sqlite+aiosqlite:///imaginebot.db",
                              description="SQLAlchemy URL; PostgreSQL: postgresql+asyncpg://...")
    signup_credits: int = Field(200, ge=0, le=MAX_AMOUNT,
                                description="Credits a new member gets once.")
    daily_credits: int = Field(100, ge=0, le=MAX_AMOUNT, description="Credits on each UTC day "
                               "a member uses the bot.")
    min_account_age_days: float = Field(7, ge=0, description="Minimum Discord account age for "
                                        "the signup bonus, so fresh alt accounts collect none.")
    hold_ttl_minutes: float = Field(360, gt=0, description="Unresolved holds expire after this.")


async def connect_ledger(settings: LedgerSettings, clock: Clock | None = None) -> Ledger:
    return await Ledger.connect(
        settings.database_url, clock,
        signup_credits=settings.signup_credits,
        daily_credits=settings.daily_credits,
        min_account_age=timedelta(days=settings.min_account_age_days),
        hold_ttl=timedelta(minutes=settings.hold_ttl_minutes),
    )
