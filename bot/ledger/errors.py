"""Errors the ledger raises for callers to turn into messages."""

from __future__ import annotations


class InsufficientCredits(Exception):
    """A hold asked for more than the user has available."""

    def __init__(self, available: int, needed: int) -> None:
        self.available = available
        self.needed = needed
        super().__init__(f"not enough credits: {needed} needed, {available} available")


class KeyReused(ValueError):
    """An idempotency key came back with different terms than its first use."""


class UnknownHold(LookupError):
    """No hold has this id."""
