"""The credit ledger: append-only transfers, holds that resolve once, lazy grants."""

from bot.ledger.config import LedgerSettings, connect_ledger
from bot.ledger.errors import InsufficientCredits, KeyReused, UnknownHold
from bot.ledger.service import HistoryEntry, Ledger, snowflake_created_at

__all__ = [
    "HistoryEntry",
    "InsufficientCredits",
    "KeyReused",
    "Ledger",
    "LedgerSettings",
    "UnknownHold",
    "connect_ledger",
    "snowflake_created_at",
]
