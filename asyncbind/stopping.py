"""Stopping on the server the statements asyncbind gives up on.

A statement cut short on the client side, past the bind's ``statement_timeout`` or by a
cancelled task, has its connection dropped at once (see :mod:`asyncbind.closing`: a polite close
would wait for a server that may have stopped answering). The server does not notice a closed
socket until it next writes to it, so the statement runs on to its end, holding its
transaction's locks: a timed-out ``UPDATE`` blocks the retry that follows it. asyncpg's own
cancel request for a cancelled statement does not go out either: dropping its connection
cancels the request too.

Each new connection's server id (PostgreSQL's backend pid, MySQL's connection id, from the
driver's public API) is kept in its pool record's ``info`` (:func:`id_listener`): a timed-out
connection is dropped before SQLAlchemy reports the error, and the driver's connection with it.
:func:`listener`, a ``handle_error`` listener, hands the id of a connection whose statement was
cut short to the engine's :class:`_Stopper`, which ends those server connections one after the
other over one connection of the engine (so that a storm of cancellations takes one connection
from the pool, not one each): ``pg_terminate_backend()`` on PostgreSQL, ``KILL CONNECTION`` on
MySQL and MariaDB. Ending one's own connections needs no privilege on either. The server rolls
the transaction back and releases its locks, and the stopper waits until it has (the server no
longer lists the connection), so that what comes after finds the locks free. Connecting and each
end are bounded by :data:`STOP_TIMEOUT`; what cannot be ended is named in a warning.
``AsyncBind.dispose()`` waits for the stoppers of its engines (:func:`settle`).

Behind PgBouncer the backend pid a client sees is not the server's, so binds with
``pgbouncer=True`` stop nothing this way (PgBouncer forwards asyncpg's cancel requests itself).

SQLite has no server, but the same wait: aiosqlite runs a statement in a thread of its own, which
a cancelled task does not stop, so the rollback that follows (and the cancelled task, and the
database's write lock) waits for the statement to finish. :func:`interrupt_listener` interrupts
the connection's statement instead (aiosqlite's ``interrupt()``, SQLite's
``sqlite3_interrupt()``, made to be called from another thread), and rolls its transaction back
before the connection is discarded; not on an in-memory database, whose sessions share one
connection, so that the statement running may be another task's.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .config import BindKey
from .exceptions import bind_name, first_line
from .registry import bind_config
from .urls import hide_passwords, render_url

__all__ = [
    "STOP_TIMEOUT",
    "applies",
    "id_listener",
    "interrupt_listener",
    "interrupts",
    "listener",
    "settle",
]

logger = logging.getLogger("asyncbind")

#: Seconds the statement that ends an abandoned server connection may take, connecting included.
STOP_TIMEOUT = 10.0

#: The server's id of a driver's connection, by driver (public driver API).
_SERVER_IDS: dict[str, Callable[[Any], int]] = {
    "asyncpg": lambda driver_connection: driver_connection.get_server_pid(),
    "aiomysql": lambda driver_connection: driver_connection.thread_id(),
    "asyncmy": lambda driver_connection: driver_connection.thread_id(),
}

#: The dialects whose server connections asyncbind ends (``mariadb://`` URLs give SQLAlchemy's
#: ``mariadb`` dialect).
_STOPPABLE = frozenset({"postgresql", "mysql", "mariadb"})
#: How long (in seconds) after each round of ends a stopper checks again whether MySQL or
#: MariaDB has finished them.
_GONE_CHECK_INTERVAL = 0.02


def _stop_sql(dialect: sa.Dialect, server_id: int) -> str:
    """The statement that ends server connection ``server_id`` and, where the server can, waits
    until it has: PostgreSQL 14 and later wait for the backend to exit (its transaction rolled
    back, its locks released), up to :data:`STOP_TIMEOUT`. MySQL's and MariaDB's ``KILL`` returns
    at once; the stopper waits for them (:func:`_gone`)."""
    if dialect.name != "postgresql":
        return f"KILL CONNECTION {server_id}"
    version = dialect.server_version_info or ()
    wait = f", {int(STOP_TIMEOUT * 1000)}" if version >= (14,) else ""
    return f"SELECT pg_terminate_backend({server_id}{wait})"


#: The key of a connection's server id in its pool record's ``info``.
_SERVER_ID = "asyncbind_server_id"
#: The execution option that marks a stopper's own connection, whose statements are never
#: stopped in turn.
_STOPPER = "asyncbind_stopper"


def applies(dialect: sa.Dialect, *, pgbouncer: bool) -> bool:
    """Whether abandoned statements of ``dialect``'s binds are stopped on the server."""
    return dialect.driver in _SERVER_IDS and dialect.name in _STOPPABLE and not pgbouncer


def interrupts(engine: sa.Engine) -> bool:
    """Whether a statement of ``engine`` cut short by a cancellation is interrupted: aiosqlite,
    unless the pool shares one connection among sessions (an in-memory database's
    ``StaticPool``), where the statement running could be another task's."""
    shared = isinstance(engine.pool, sa_pool.StaticPool | sa_pool.SingletonThreadPool)
    return engine.dialect.driver == "aiosqlite" and not shared


def interrupt_listener(ctx: ExceptionContext) -> None:
    """A ``handle_error`` listener that interrupts a SQLite statement cut short by a
    cancellation and rolls its transaction back, before SQLAlchemy discards the connection.

    The rollback releases the database's write lock. Closing the connection would not:
    SQLAlchemy discards it (a cancellation counts as a disconnect) without closing the
    statement's cursor, which the error's traceback keeps alive, and Python's sqlite3 closes a
    connection with a live cursor only in part, its transaction still open, until the garbage
    collector frees the cursor. The interrupt rarely stops an ``executemany()`` (SQLite clears
    it between rows), so the rollback waits for the rows being written.
    """
    connection = ctx.connection
    if not isinstance(ctx.original_exception, asyncio.CancelledError) or connection is None:
        return
    if ctx.statement is None:
        return  # a COMMIT or ROLLBACK: it ends soon by itself
    try:  # whatever goes wrong here must not replace the error being handled
        adapted: Any = connection.connection.dbapi_connection  # SQLAlchemy's AdaptedConnection
        adapted.run_async(_interrupt_and_roll_back)
    except Exception:  # closed meanwhile: nothing runs on it
        return


async def _interrupt_and_roll_back(driver: Any) -> None:
    await driver.interrupt()  # the statement running in aiosqlite's thread
    await driver.rollback()  # queued in that thread behind the statement, before any close


def id_listener(driver: str) -> Callable[[Any, sa_pool.ConnectionPoolEntry], None]:
    """A ``connect`` listener that keeps each new connection's server id in its pool record's
    ``info``."""
    server_id = _SERVER_IDS[driver]

    def remember(_dbapi_connection: Any, record: sa_pool.ConnectionPoolEntry) -> None:
        record.info[_SERVER_ID] = int(server_id(record.driver_connection))

    return remember


class _Stopper:
    """The server connections of one engine still to end, and the task ending them (which alone
    holds the engine, while it runs)."""

    def __init__(self, key: BindKey) -> None:
        self.key = key
        self.ids: list[int] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, engine: sa.Engine, server_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.ids.append(server_id)
        task = self.task
        # A task of another event loop (closed, or not running now) will not get to it.
        if task is None or task.done() or task.get_loop() is not loop:
            self.task = loop.create_task(
                self._run(engine), name=f"asyncbind stops {bind_name(self.key)}"
            )

    async def _run(self, engine: sa.Engine) -> None:
        # Ids added while the connection closes are ended by the next round.
        while self.ids:
            try:
                await self._end_all(engine)
            except Exception as exc:  # reported, never raised: nobody awaits this task
                ids, self.ids = self.ids, []
                config = bind_config(engine)
                logger.warning(
                    "%s: could not end server connection %s on %s, whose statement was "
                    "abandoned; it runs on until it ends by itself (%s)",
                    bind_name(self.key, start=True),
                    ", ".join(map(str, ids)),
                    render_url(engine.url),  # a replica's, or the primary's
                    hide_passwords(
                        first_line(exc), [engine.url], config.passwords if config else ()
                    ),
                )

    async def _end_all(self, engine: sa.Engine) -> None:
        dialect = engine.dialect
        async with asyncio.timeout(STOP_TIMEOUT):
            conn = await AsyncEngine(engine).connect()
        try:
            await conn.execution_options(**{_STOPPER: True})
            while self.ids:
                server_id = self.ids[0]
                try:
                    async with asyncio.timeout(STOP_TIMEOUT):
                        await conn.exec_driver_sql(_stop_sql(dialect, server_id))
                        if dialect.name != "postgresql":
                            await _gone(conn, server_id)
                except Exception as exc:
                    if not _already_gone(exc):
                        raise
                del self.ids[0]
        finally:
            await conn.close()


#: The stoppers of the engines with statements stopped so far.
_STOPPERS: weakref.WeakKeyDictionary[sa.Engine, _Stopper] = weakref.WeakKeyDictionary()


def listener(key: BindKey) -> Callable[[ExceptionContext], None]:
    """A ``handle_error`` listener for bind ``key`` that stops on the server a statement cut short
    by a cancellation (a cancelled task's, or one past the bind's ``statement_timeout``)."""

    def stop(ctx: ExceptionContext) -> None:
        error = ctx.original_exception
        connection = ctx.connection
        engine = ctx.engine
        if not isinstance(error, asyncio.CancelledError) or connection is None or engine is None:
            return
        if ctx.statement is None:
            return  # a COMMIT or ROLLBACK: the server ends it, then finds the connection closed
        try:  # whatever goes wrong here must not replace the error being handled
            server_id = connection.info.get(_SERVER_ID)
            stopper_own = connection.get_execution_options().get(_STOPPER)
            loop = asyncio.get_running_loop()
        except Exception:  # a connection closed meanwhile, no loop: nothing to stop with
            return
        if server_id is None or stopper_own:
            return
        stopper = _STOPPERS.get(engine)
        if stopper is None:
            stopper = _STOPPERS[engine] = _Stopper(key)
        stopper.add(engine, server_id, loop)

    return stop


async def _gone(conn: AsyncConnection, server_id: int) -> None:
    """Wait until MySQL or MariaDB no longer lists connection ``server_id``, which ``KILL`` only
    marks to be ended: it rolls its transaction back and releases its locks first."""
    listed = sa.text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = :id")
    while True:  # the server has no event to wait for: ask it again after a moment
        if not await conn.scalar(listed, {"id": server_id}):
            return
        await asyncio.sleep(_GONE_CHECK_INTERVAL)


def _already_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection had ended already (MySQL's "Unknown thread id")."""
    args: tuple[Any, ...] = getattr(getattr(exc, "orig", None), "args", ())
    return bool(args) and args[0] == 1094  # ER_NO_SUCH_THREAD


async def settle(engines: Iterable[AsyncEngine]) -> None:
    """Wait until the statements abandoned on ``engines`` are stopped (or said not to be)."""
    loop = asyncio.get_running_loop()
    for engine in engines:
        stopper = _STOPPERS.get(engine.sync_engine)
        task = stopper.task if stopper is not None else None
        if task is not None and not task.done() and task.get_loop() is loop:
            await asyncio.wait([task])
