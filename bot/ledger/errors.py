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


class OverLimit(ValueError):
    """An amount, or the balance it would make, is over the ledger's limits.

    The limits keep every sum far inside a 64-bit integer: SQLite turns an overflowing
    integer into an inexact REAL, and PostgreSQL refuses the statement.
    """

    def __init__(self, message: str, limit: int) -> None:
        self.limit = limit
        super().__init__(message)


class AmountTooLarge(OverLimit):
    """One transfer asked to move more than :data:`bot.ledger.models.MAX_AMOUNT`."""

    def __init__(self, amount: int, limit: int) -> None:
        self.amount = amount
        super().__init__(f"one transfer moves at most {limit} credits, not {amount}", limit)


class BalanceTooLarge(OverLimit):
    """A credit would take a balance over :data:`bot.ledger.models.MAX_BALANCE`."""

    def __init__(self, user_id: int, amount: int, limit: int) -> None:
        self.user_id = user_id
        self.amount = amount
        super().__init__(f"crediting {amount} would take user {user_id}'s balance over "
                         f"{limit} credits", limit)
