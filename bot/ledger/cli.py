"""``imaginebot credits``: admin credit operations from a shell, recorded with actor 0.

An amount over the ledger's limits is a usage error: one line and exit status 2, as argparse
gives for a malformed one, without its usage text (the amount was well formed, only too large).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from sqlalchemy.exc import SQLAlchemyError

from bot.database import describe_database_error
from bot.ledger.config import LedgerSettings, connect_ledger
from bot.ledger.errors import OverLimit
from bot.ledger.service import HistoryEntry, Ledger

SHELL_ACTOR = 0
USAGE_ERROR = 2


def _user_id(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a Discord user id: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def add_credits_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="credits_action", required=True, metavar="ACTION")
    balance = actions.add_parser("balance", help="show a user's balance")
    balance.add_argument("user", type=_user_id, help="Discord user id")
    for name, verb in (("grant", "add credits to"), ("revoke", "take credits from")):
        action = actions.add_parser(name, help=f"{verb} a user")
        action.add_argument("user", type=_user_id, help="Discord user id")
        action.add_argument("amount", type=_positive, help="credits")
        action.add_argument("reason", help="why, kept in the ledger")
    history = actions.add_parser("history", help="show a user's recent transfers")
    history.add_argument("user", type=_user_id, help="Discord user id")
    history.add_argument("--limit", type=_positive, default=20, metavar="N",
                         help="how many entries (default 20)")
    actions.add_parser("audit", help="check the ledger's invariants; exit 1 if any is broken")


def format_entry(entry: HistoryEntry) -> str:
    actor = "" if entry.actor is None else f" (by {entry.actor})"
    return (f"{entry.time:%Y-%m-%d %H:%M} UTC  {entry.kind:<8} {entry.amount:>+7}  "
            f"{entry.reason or ''}{actor}").rstrip()


async def _run(ledger: Ledger, args: argparse.Namespace) -> int:
    action = args.credits_action
    if action == "balance":
        print(f"user {args.user}: {await ledger.balance(args.user)} available, "
              f"{await ledger.pending_holds(args.user)} held")
    elif action == "grant":
        balance = await ledger.grant(args.user, args.amount, SHELL_ACTOR, args.reason,
                                     f"cli:grant:{uuid.uuid4()}")
        print(f"granted {args.amount} to user {args.user}; balance {balance}")
    elif action == "revoke":
        taken = await ledger.revoke(args.user, args.amount, SHELL_ACTOR, args.reason,
                                    f"cli:revoke:{uuid.uuid4()}")
        print(f"revoked {taken} of {args.amount} from user {args.user}; "
              f"balance {await ledger.balance(args.user)}")
    elif action == "history":
        entries = await ledger.history(args.user, args.limit)
        for entry in entries:
            print(format_entry(entry))
        if not entries:
            print(f"user {args.user} has no transfers")
    else:
        problems = await ledger.audit()
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) found" if problems else "ledger is healthy")
        return 1 if problems else 0
    return 0


def credits_command(args: argparse.Namespace, settings: LedgerSettings) -> int:
    async def run() -> int:
        ledger = await connect_ledger(settings)
        try:
            return await _run(ledger, args)
        finally:
            await ledger.close()

    try:
        return asyncio.run(run())
    except OverLimit as error:
        print(f"imaginebot credits: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (SQLAlchemyError, OSError) as error:
        print(f"imaginebot credits: {describe_database_error(error)}", file=sys.stderr)
        return 1
