"""The credit ledger: append-only transfers, holds that resolve once, lazy grants."""

from bot.ledger.config import LedgerSettings, connect_ledger
from bot.ledger.errors import InsufficientCredits, KeyReused, UnknownHold
from bot.ledger.service import (
    Clock,
    HistoryEntry,
    HoldInfo,
    HoldStatus,
    Ledger,
    snowflake_created_at,
    system_clock,
)

__all__ = [
    "Clock",
    "HistoryEntry",
    "HoldInfo",
    "HoldStatus",
    "InsufficientCredits",
    "KeyReused",
    "Ledger",
    "LedgerSettings",
    "UnknownHold",
    "connect_ledger",
    "snowflake_created_at",
    "system_clock",
]
