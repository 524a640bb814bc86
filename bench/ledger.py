"""Hold-and-capture pairs per second on SQLite: the Ledger against a naive version, same run.

Three versions spend from one user's balance (the worst case for contention), 1 and 20
concurrent tasks each:

* ledger: ``hold()`` then ``capture()``, two transactions (append-only transfers);
* ledger + job: the bot's enqueue, ``transaction()`` with ``hold(connection=)`` and the insert
  of a job row in it, then ``capture()``;
* naive: read the balance, then write back what was read minus the cost (the classic lost
  update), with a holds table updated in place.

Each round runs the three one after another on fresh databases, in an order that rotates, and
the table shows the median of the rounds, so a loaded machine's noise hits all three alike.
Lost updates: how far the final balance is from the start minus the pairs made.

    .venv/bin/python bench/ledger.py [--pairs 1000] [--tasks 1 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.ledger import Ledger

USER = 175928847299117063
START_BALANCE = 1_000_000
VERSIONS = ("ledger", "ledger + job", "naive")

# A stand-in for the bot's job row, so the benchmark does not follow the jobs schema around.
bench_jobs = Table("bench_jobs", MetaData(), Column("id", Integer, primary_key=True),
                   Column("request_key", String(120), unique=True),
                   Column("owner_id", BigInteger), Column("hold_id", BigInteger),
                   Column("params", String(2000)))
PARAMS = '{"prompt": "a lighthouse at dusk", "steps": 20, "width": 512, "height": 512}'
# Built once, like the naive version's SQL text: the benchmark times the database work.
INSERT_JOB = insert(bench_jobs)

Bench = Callable[[Path, int, int], Awaitable[tuple[float, int]]]


async def run_tasks(pairs: int, tasks: int, pair: Callable[[int], Awaitable[None]]) -> float:
    """Run ``pairs`` calls of ``pair`` spread over ``tasks`` coroutines; seconds taken."""
    queue = iter(range(pairs))

    async def worker() -> None:
        for n in queue:
            await pair(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - started


async def bench_ledger(directory: Path, pairs: int, tasks: int, *,
                       with_job: bool = False) -> tuple[float, int]:
    ledger = await Ledger.connect(f"sqlite+aiosqlite:///{directory / 'ledger.db'}",
                                  signup_credits=0, daily_credits=0)
    try:
        await ledger.grant(USER, START_BALANCE, 0, "bench", "bench:start")
        async with ledger.database.begin() as conn:
            await conn.run_sync(bench_jobs.create)

        async def pair(n: int) -> None:
            await ledger.capture(await ledger.hold(USER, 1, f"bench:{n}"))

        async def pair_with_job(n: int) -> None:
            async with ledger.transaction() as conn:
                hold_id = await ledger.hold(USER, 1, f"bench:{n}", connection=conn)
                await conn.execute(INSERT_JOB, {"request_key": f"bench:{n}", "owner_id": USER,
                                                "hold_id": hold_id, "params": PARAMS})
            await ledger.capture(hold_id)

        seconds = await run_tasks(pairs, tasks, pair_with_job if with_job else pair)
        assert await ledger.audit() == []
        lost = START_BALANCE - pairs - await ledger.balance(USER)
        return seconds, abs(lost)
    finally:
        await ledger.close()


async def bench_ledger_with_job(directory: Path, pairs: int, tasks: int) -> tuple[float, int]:
    return await bench_ledger(directory, pairs, tasks, with_job=True)


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


BENCHES: dict[str, Bench] = {"ledger": bench_ledger, "ledger + job": bench_ledger_with_job,
                             "naive": bench_naive}


async def measure(pairs: int, tasks: int, rounds: int) -> dict[str, tuple[float, int]]:
    """Median pairs/s and the most lost updates of each version over ``rounds`` rounds."""
    rates: dict[str, list[float]] = {name: [] for name in VERSIONS}
    lost: dict[str, int] = dict.fromkeys(VERSIONS, 0)
    for round_ in range(rounds):
        order = VERSIONS[round_ % 3:] + VERSIONS[:round_ % 3]
        for name in order:
            with tempfile.TemporaryDirectory() as directory:
                seconds, missing = await BENCHES[name](Path(directory), pairs, tasks)
            rates[name].append(pairs / seconds)
            lost[name] = max(lost[name], missing)
    return {name: (statistics.median(rates[name]), lost[name]) for name in VERSIONS}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = {tasks: await measure(args.pairs, tasks, args.rounds) for tasks in args.tasks}
    print(f"{args.pairs} hold+capture pairs on one user's balance, SQLite, median of "
          f"{args.rounds} rounds\n")
    print("| tasks | version | pairs/s | ms/pair | ledger / naive | lost updates |")
    print("|---:|---|---:|---:|---:|---:|")
    for tasks, result in results.items():
        naive_rate = result["naive"][0]
        for name in VERSIONS:
            rate, lost = result[name]
            ratio = "" if name == "naive" else f"{rate / naive_rate:.2f}x"
            print(f"| {tasks} | {name} | {rate:.0f} | {1000 / rate:.2f} | {ratio} | {lost} |")


if __name__ == "__main__":
    asyncio.run(main())
