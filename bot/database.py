"""The one place that knows how to open the database, write to it and bring its schema up to date.

SQLite gets WAL, a busy timeout, foreign keys and BEGIN IMMEDIATE for write transactions, so
concurrent writers queue on the lock instead of failing halfway with "database is locked".
A :class:`Writer` serialises this process's write transactions on SQLite before they reach
that lock. Other dialects (PostgreSQL through asyncpg) are used as they come.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Dialect, Engine, MetaData, NullPool, create_engine, event
from sqlalchemy.engine import URL, AdaptedConnection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

import migrations

T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Modules whose models join Base.metadata; Alembic's env imports them for autogenerate.
MODEL_MODULES: tuple[str, ...] = ("bot.ledger.models", "bot.jobs.models")

# Execution option for transactions that only read: they begin DEFERRED and never take the
# SQLite write lock.
READ_ONLY = "imaginebot_read_only"

SQLITE_BUSY_TIMEOUT_MS = 30_000


class Base(DeclarativeBase):
    """Shared declarative base: every table's constraints get predictable names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def import_models() -> MetaData:
    """Import every model module so Base.metadata knows all tables."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return Base.metadata


def create_database(database_url: str, **kwargs: Any) -> AsyncEngine:
    """The database: an async SQLAlchemy engine, on SQLite with the pragmas and the
    BEGIN IMMEDIATE hook installed.

    In bot/ "engine" always means the diffusion engine, so this object is called the database.
    """
    database = create_async_engine(database_url, **kwargs)
    if database.dialect.name == "sqlite":
        path = sqlite_path(database.url)
        if path is not None:
            # A fresh install's data/ folder should not be an error.
            path.parent.mkdir(parents=True, exist_ok=True)
        _configure_sqlite(database.sync_engine)
    return database


def sqlite_path(url: str | URL) -> Path | None:
    """The file behind a SQLite URL; None for other databases, in-memory SQLite and URI
    filenames (``file:...``, which name their file in their own way)."""
    url = make_url(url)
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:" \
            or path.startswith("file:"):
        return None
    return Path(path)


def _configure_sqlite(database: Engine) -> None:
    @event.listens_for(database, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not emit its own BEGIN; the "begin" hook below does.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(database, "begin")
    def _on_begin(conn: Connection) -> None:
        # Taking the write lock at BEGIN makes a read-then-write transaction wait for its turn
        # (honouring busy_timeout) instead of failing when it upgrades its lock.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        driver = conn.connection.dbapi_connection
        if isinstance(driver, AdaptedConnection):
            # aiosqlite: one trip to its thread, where a cursor would take three.
            driver.run_async(lambda aiosqlite: aiosqlite.execute_fetchall(begin))
        else:
            conn.exec_driver_sql(begin)


class Writer:
    """How this process writes one database: on SQLite, one write transaction at a time.

    SQLite allows one writer anyway. Tasks that take turns on an asyncio lock never reach
    SQLite's busy handler, which sleeps and polls, and so stays for other processes (the
    ``imaginebot credits`` shell commands). On a SQLite file, :meth:`run` also executes each
    transaction whole in a thread of its own on a plain ``sqlite3`` connection: one hop
    between the event loop and that thread per transaction, where aiosqlite makes three or
    four per statement (cursor, execute, fetch, close), which is most of a short
    transaction's cost. Transactions that need an ``AsyncConnection`` (:meth:`begin`) take
    the same lock. PostgreSQL is used as it comes: no lock, its own row locks.
    """

    def __init__(self, database: AsyncEngine) -> None:
        self._database = database
        sqlite = database.dialect.name == "sqlite"
        self._lock = asyncio.Lock() if sqlite else None
        self._threaded = sqlite and sqlite_path(database.url) is not None
        self._executor: ThreadPoolExecutor | None = None
        self._inside: set[asyncio.Task[Any]] = set()  # tasks in a begin() block right now
        # SQLite's begin() blocks share one connection: no pool checkout, no reset on return.
        self._joined: AsyncConnection | None = None
        # Both live in the writer thread: made, used and closed only there.
        self._engine: Engine | None = None
        self._connection: Connection | None = None

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on an ``AsyncConnection``; commits unless the block raises.

        Inside the block, the task must write only through that connection: another write
        would wait for the block to end (on SQLite the lock, on PostgreSQL a row lock), which
        waits for the write. That mistake raises instead of hanging.
        """
        self._refuse_nesting()
        task = asyncio.current_task()
        assert task is not None
        self._inside.add(task)
        try:
            if self._lock is None:
                async with self._database.begin() as conn:
                    yield conn
                return
            async with self._lock:
                if self._joined is None or self._joined.closed:
                    self._joined = await self._database.connect()
                async with self._joined.begin():
                    yield self._joined
        finally:
            self._inside.discard(task)

    def _refuse_nesting(self) -> None:
        if asyncio.current_task() in self._inside:
            raise RuntimeError("a second write transaction inside a Writer.begin() block would "
                               "wait for the block to end; write through its connection")

    async def run(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one write transaction: committed if it returns, rolled back if it raises.

        A task cancelled while its transaction runs in the thread keeps the lock until the
        transaction has ended, so the next writer never meets it in SQLite's busy handler.
        """
        self._refuse_nesting()
        lock = self._lock
        if not self._threaded or lock is None:
            async with self.begin() as conn:
                return await conn.run_sync(work)
        await lock.acquire()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        done = asyncio.get_running_loop().run_in_executor(self._executor, self._transact, work)
        done.add_done_callback(lambda _: lock.release())
        return await asyncio.shield(done)

    def _transact(self, work: Callable[[Connection], T]) -> T:
        if self._connection is None:
            url = self._database.url.set(drivername="sqlite")  # the stdlib driver, no hops
            self._engine = create_engine(url, poolclass=NullPool)
            _configure_sqlite(self._engine)
            self._connection = self._engine.connect()
        with self._connection.begin():
            return work(self._connection)

    async def close(self) -> None:
        """Close the writer's connections and thread; a later write opens them again."""
        if self._lock is None:
            return
        async with self._lock:
            if self._joined is not None:
                await self._joined.close()
                self._joined = None
            if self._executor is not None:
                executor, self._executor = self._executor, None
                await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
                executor.shutdown()

    def _disconnect(self) -> None:
        if self._connection is not None and self._engine is not None:
            self._connection.close()
            self._engine.dispose()
        self._connection = self._engine = None


class OneTrip:
    """A Core statement that runs on aiosqlite in one trip to its thread.

    SQLAlchemy's aiosqlite adapter takes three or four trips per statement (cursor, execute,
    fetch, close), and each trip (a thread wake-up and a loop wake-up) costs more than SQLite's
    work on a short statement. This compiles the statement once and hands its SQL and bound
    values, processed by their types as SQLAlchemy would, to aiosqlite's ``execute_fetchall``.
    Meant for a hot statement inside a transaction of an ``AsyncConnection`` (it shares that
    connection and transaction); database errors arrive as ``sqlite3`` exceptions.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        if dialect.driver != "aiosqlite":
            raise ValueError(f"OneTrip runs on aiosqlite, not {dialect.driver}")
        self._compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        binds = self._compiled.binds
        self._order = [(name, binds[name].type.bind_processor(dialect))
                       for name in self._compiled.positiontup or ()]

    async def fetchall(self, connection: AsyncConnection,
                       params: Mapping[str, Any]) -> list[Any]:
        values = self._compiled.construct_params(params)
        assert values is not None
        args = [values[name] if process is None else process(values[name])
                for name, process in self._order]
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        return list(await driver.execute_fetchall(self._compiled.string, args))


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configured in code, so an installed package finds its migrations."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(database: AsyncEngine, revision: str = "head") -> str | None:
    """Apply migrations on a connection shared with Alembic; returns the revision reached."""

    def do_upgrade(connection: Connection) -> str | None:
        command.upgrade(alembic_config(connection), revision)
        return current_revision(connection)

    async with database.begin() as conn:
        return await conn.run_sync(do_upgrade)


async def downgrade(database: AsyncEngine, revision: str) -> str | None:
    """Revert migrations down to ``revision`` ("base" empties the schema)."""

    def do_downgrade(connection: Connection) -> str | None:
        command.downgrade(alembic_config(connection), revision)
        return current_revision(connection)

    async with database.begin() as conn:
        return await conn.run_sync(do_downgrade)


def upgrade_command(database_url: str) -> int:
    """``imaginebot db upgrade``: migrate to head and say where the schema is now."""

    async def run() -> str | None:
        database = create_database(database_url)
        try:
            return await upgrade(database)
        finally:
            await database.dispose()

    try:
        revision = asyncio.run(run())
    except (SQLAlchemyError, OSError) as error:
        print(f"imaginebot db: {describe_database_error(error)}", file=sys.stderr)
        return 1
    print(f"database is at revision {revision or 'base'}")
    return 0


def describe_database_error(error: SQLAlchemyError | OSError) -> str:
    """One line for an admin: the driver's message without SQLAlchemy's SQL echo and links."""
    return "database error: " + str(getattr(error, "orig", None) or error).splitlines()[0]
