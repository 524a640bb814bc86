"""The credit ledger: append-only transfers, holds that resolve once, lazy grants."""

from bot.ledger.config import LedgerSettings, connect_ledger
from bot.ledger.errors import (
    AmountTooLarge,
    BalanceTooLarge,
    InsufficientCredits,
    KeyReused,
    OverLimit,
    UnknownHold,
)
from bot.ledger.models import MAX_AMOUNT, MAX_BALANCE
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
    "MAX_AMOUNT",
    "MAX_BALANCE",
    "AmountTooLarge",
    "BalanceTooLarge",
    "Clock",
    "HistoryEntry",
    "HoldInfo",
    "HoldStatus",
    "InsufficientCredits",
    "KeyReused",
    "Ledger",
    "LedgerSettings",
    "OverLimit",
    "UnknownHold",
    "connect_ledger",
    "snowflake_created_at",
    "system_clock",
]
