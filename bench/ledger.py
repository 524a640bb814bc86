"""Hold-and-capture pairs per second with 20 concurrent tasks on SQLite.

Compares the real Ledger (BEGIN IMMEDIATE, conditional UPDATE, append-only transfers) with a
naive read-then-write balance in the same run, and counts the naive version's lost updates.
All tasks spend from one user's balance, the worst case for contention.

    .venv/bin/python bench/ledger.py [--pairs 1000] [--tasks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.ledger import Ledger

USER = 175928847299117063
START_BALANCE = 1_000_000


async def run_tasks(pairs: int, tasks: int, pair: Callable[[int], Awaitable[None]]) -> float:
    """Run ``pairs`` calls of ``pair`` spread over ``tasks`` coroutines; seconds taken."""
    queue = iter(range(pairs))

    async def worker() -> None:
        for n in queue:
            await pair(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - started


async def bench_ledger(directory: Path, pairs: int, tasks: int) -> tuple[float, int]:
    ledger = await Ledger.connect(f"sqlite+aiosqlite:///{directory / 'ledger.db'}",
                                  signup_credits=0, daily_credits=0)
    try:
        await ledger.grant(USER, START_BALANCE, 0, "bench", "bench:start")

        async def pair(n: int) -> None:
            await ledger.capture(await ledger.hold(USER, 1, f"bench:{n}"))

        seconds = await run_tasks(pairs, tasks, pair)
        assert await ledger.audit() == []
        lost = START_BALANCE - pairs - await ledger.balance(USER)
        return seconds, abs(lost)
    finally:
        await ledger.close()


async def naive_engine(path: Path) -> AsyncEngine:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE balances (user_id INTEGER PRIMARY KEY, "
                                "balance INTEGER NOT NULL)"))
        await conn.execute(text("CREATE TABLE holds (id INTEGER PRIMARY KEY, user_id INTEGER, "
                                "amount INTEGER, state TEXT)"))
        await conn.execute(text("INSERT INTO balances VALUES (:u, :b)"),
                           {"u": USER, "b": START_BALANCE})
    return engine


async def bench_naive(directory: Path, pairs: int, tasks: int) -> tuple[float, int]:
    """Read the balance, then write back what was read minus the cost: the classic bug."""
    engine = await naive_engine(directory / "naive.db")
    try:
        async def pair(n: int) -> None:
            async with engine.connect() as conn:
                balance = await conn.scalar(text("SELECT balance FROM balances "
                                                 "WHERE user_id = :u"), {"u": USER})
                await conn.commit()
                if balance < 1:
                    return
                await conn.execute(text("UPDATE balances SET balance = :b WHERE user_id = :u"),
                                   {"b": balance - 1, "u": USER})
                hold_id = (await conn.execute(text(
                    "INSERT INTO holds (user_id, amount, state) VALUES (:u, 1, 'pending') "
                    "RETURNING id"), {"u": USER})).scalar_one()
                await conn.commit()
                await conn.execute(text("UPDATE holds SET state = 'captured' WHERE id = :h"),
                                   {"h": hold_id})
                await conn.commit()

        seconds = await run_tasks(pairs, tasks, pair)
        async with engine.connect() as conn:
            balance = await conn.scalar(text("SELECT balance FROM balances"))
        return seconds, balance - (START_BALANCE - pairs)
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        ledger_s, ledger_lost = await bench_ledger(directory, args.pairs, args.tasks)
        naive_s, naive_lost = await bench_naive(directory, args.pairs, args.tasks)
    ledger_rate, naive_rate = args.pairs / ledger_s, args.pairs / naive_s
    print(f"{args.pairs} hold+capture pairs, {args.tasks} concurrent tasks, one user, SQLite\n")
    print("| version | seconds | pairs/s | lost updates |")
    print("|---|---:|---:|---:|")
    print(f"| Ledger (BEGIN IMMEDIATE, append-only) | {ledger_s:.2f} | {ledger_rate:.0f} | "
          f"{ledger_lost} |")
    print(f"| naive read-then-write | {naive_s:.2f} | {naive_rate:.0f} | {naive_lost} |")
    print(f"\nledger / naive throughput: {ledger_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
