"""Build a Ledger from the bot's settings without importing them (the ledger stays standalone)."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from bot.ledger.service import Clock, Ledger


class LedgerSettings(Protocol):
    database_url: str
    signup_credits: int
    daily_credits: int
    min_account_age_days: float
    hold_ttl_minutes: float


async def connect_ledger(settings: LedgerSettings, clock: Clock | None = None) -> Ledger:
    return await Ledger.connect(
        settings.database_url, clock,
        signup_credits=settings.signup_credits,
        daily_credits=settings.daily_credits,
        min_account_age=timedelta(days=settings.min_account_age_days),
        hold_ttl=timedelta(minutes=settings.hold_ttl_minutes),
    )
