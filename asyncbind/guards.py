"""What keeps one bind's trouble from spreading: timeouts, errors that name the bind, and pools
that refuse to be used from a second event loop.

- ``connect_timeout`` bounds a new connection, TCP and handshake both.
- ``statement_timeout`` bounds each statement, commit and rollback on the client side, so a server
  that stops answering (not only one that is slow) is abandoned. The connection is then dropped at
  once, without the goodbye a server that stopped answering would never acknowledge.
- A connection whose goodbye fails (the server reset it meanwhile) is dropped at once rather than
  left open until garbage collection.
- Connection failures become :class:`~asyncbind.exceptions.BindUnavailableError` (or the more
  precise error :mod:`asyncbind.causes` finds: a refused login, a missing database, a connection
  the server ended, a deadlock) and timeouts :class:`~asyncbind.exceptions.StatementTimeoutError`,
  all naming the bind.

Cancellations in the connector and the pool are absorbed by :mod:`asyncbind.cancellation`;
connections of another event loop are closed by :mod:`asyncbind.loops`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.asyncio import AsyncEngine

from . import cancellation, causes, loops
from .config import BindConfig, BindKey
from .exceptions import (
    BindUnavailableError,
    PoolTimeoutError,
    StatementTimeoutError,
    WrongEventLoopError,
)

__all__ = ["connector", "install", "loop_affine_pool", "mentions"]

_TIMEOUT_MARK = "_asyncbind_timeout"
#: Seconds a connection may take to close politely before it is dropped, when the bind sets no
#: timeout of its own.
CLOSE_TIMEOUT = 10.0


# -- connecting ------------------------------------------------------------------------------

#: How a driver's connection is dropped at once, with no message to the server. SQLAlchemy's own
#: ``terminate()`` first tries a polite close, which asyncpg lets wait up to 2s for an answer.
_DROPS: dict[str, Callable[[Any], None]] = {
    "asyncpg": lambda driver_connection: driver_connection.terminate(),
    "aiomysql": lambda driver_connection: driver_connection.close(),
}


def _aiomysql_open() -> Callable[..., Any]:
    import aiomysql

    async def open_aiomysql(*args: Any, **kwargs: Any) -> Any:
        # aiomysql.connect() leaks its socket when cancelled mid-handshake; close it here.
        conn = aiomysql.Connection(*args, **kwargs)
        try:
            await conn._connect()
        except BaseException:
            conn.close()
            raise
        return conn

    return open_aiomysql


_OPENERS: dict[str, Callable[[], Callable[..., Any]]] = {
    "aiomysql": _aiomysql_open,
    "asyncpg": lambda: __import__("asyncpg").connect,
    "asyncmy": lambda: __import__("asyncmy").connect,
    "psycopg": lambda: __import__("psycopg").AsyncConnection.connect,
}


def connector(driver: str, key: BindKey, timeout: float | None) -> Callable[..., Any] | None:
    """An ``async_creator_fn`` for ``driver``: connects within ``timeout`` (handshake included),
    is not cut short mid-handshake when its caller is cancelled (:mod:`asyncbind.cancellation`),
    and turns a failure to connect into the error that names ``key`` and the cause
    (:mod:`asyncbind.causes`): :class:`BindUnavailableError` or one of its subclasses.

    None for drivers it does not know (and SQLite's, which open local files).
    """
    if driver not in _OPENERS:
        return None
    try:
        open_connection = _OPENERS[driver]()
    except ImportError:
        return None  # create_async_engine() reports the missing driver

    drop = _DROPS.get(driver)

    async def attempt(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(timeout):
            return await open_connection(*args, **kwargs)

    async def connect(*args: Any, **kwargs: Any) -> Any:
        try:
            if drop is None:
                return await attempt(*args, **kwargs)
            # Not cut short mid-handshake by the caller's cancellation (asyncbind.cancellation).
            return await cancellation.finish_if_cancelled(attempt(*args, **kwargs), drop)
        except Exception as exc:
            password = kwargs.get("password")
            diagnosis = causes.diagnose(exc)
            # asyncpg and psycopg name the database "database", aiomysql and asyncmy "db".
            who = {"user": kwargs.get("user"), "database": kwargs.get("database", kwargs.get("db"))}
            if not (password and mentions(exc, str(password))):
                if isinstance(exc, TimeoutError) and timeout is not None:
                    reason = TimeoutError(f"no connection within connect_timeout={timeout:g}s")
                    raise BindUnavailableError(key, reason) from exc
                if isinstance(exc, OSError) or diagnosis is not None:
                    # Refused, unreachable, reset; a login refused, a missing database.
                    raise causes.connect_error(key, exc, diagnosis, **who) from exc
                raise
            # Some driver errors quote the password (aiomysql's UnicodeEncodeError does): keep
            # the type and the cause, drop the text (and the names, which may hold the password
            # too), and raise outside this block so that not even __context__ leads back to it.
            hidden = ConnectionError(f"{type(exc).__name__} while connecting (details hidden)")
        raise causes.connect_error(key, hidden, diagnosis, user=None, database=None) from None

    return connect


def mentions(exc: BaseException, secret: str) -> bool:
    """Whether ``exc`` or anything in its chain repeats ``secret``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if secret in str(current) or secret in repr(current) or secret in repr(current.args):
            return True
        current = current.__cause__ or current.__context__
    return False


# -- statement timeout -------------------------------------------------------------------------


class _Deadline:
    """Cancels the current task if a driver call runs past its time."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


def _bounded(
    method: Callable[..., Any],
    timeout: float,
    on_expiry: Callable[[tuple[Any, ...], asyncio.CancelledError], Any],
) -> Callable[..., Any]:
    """``method`` (a blocking-looking driver call run in SQLAlchemy's greenlet) cut short after
    ``timeout`` seconds; ``on_expiry(args, cancellation)`` then decides what happens."""

    def call(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        if task is None:
            return method(*args, **kwargs)
        deadline = _Deadline(task)
        handle = task.get_loop().call_later(timeout, deadline.fire)
        try:
            return method(*args, **kwargs)
        except asyncio.CancelledError as exc:
            if not deadline.fired:
                raise
            task.uncancel()
            return on_expiry(args, exc)
        finally:
            handle.cancel()

    return call


def _dropper(dialect: sa.Dialect) -> Callable[[Any], None]:
    """A function that drops a DBAPI connection of ``dialect`` (or a cursor's) at once.

    Made before the dialect's methods are bounded. A dialect with no ``do_terminate()`` of its own
    (psycopg's) inherits one that calls ``do_close()``: that must be the close as it is now, not
    the bounded one that drops the connection when closing fails, which would lead back here.
    """
    drop = _DROPS.get(dialect.driver)
    if type(dialect).do_terminate is DefaultDialect.do_terminate:
        terminate = dialect.do_close
    else:
        terminate = dialect.do_terminate

    def drop_now(connection_or_cursor: Any) -> None:
        # SQLAlchemy's adapted cursors know their connection as _adapt_connection.
        connection = getattr(connection_or_cursor, "_adapt_connection", connection_or_cursor)
        driver_connection = getattr(connection, "driver_connection", None)
        if drop is None or driver_connection is None:
            terminate(connection)
        else:
            drop(driver_connection)

    return drop_now


def _install_timeouts(
    dialect: sa.Dialect, config: BindConfig, drop_now: Callable[[Any], None]
) -> None:
    """Bound the driver calls that can wait on the network for ever.

    A statement, commit or rollback past ``statement_timeout`` raises; handle_error turns it into
    StatementTimeoutError and discards the connection. A pre-ping past the statement (or connect)
    timeout counts as a dead connection, so the pool opens a new one. Closing a connection is
    bounded in any case. A connection abandoned in any of these ways is dropped on the spot:
    the server has stopped answering, so waiting for it to acknowledge a goodbye would only make
    the error late.
    """
    statement = config.statement_timeout

    def abandon(what: str) -> Callable[[tuple[Any, ...], asyncio.CancelledError], Any]:
        def expire(args: tuple[Any, ...], exc: asyncio.CancelledError) -> Any:
            setattr(exc, _TIMEOUT_MARK, (statement, what))
            # The timeout is the error to report; SQLAlchemy discards the connection anyway.
            with contextlib.suppress(Exception):
                drop_now(args[0])
            raise exc

        return expire

    def terminate(result: Any) -> Callable[[tuple[Any, ...], asyncio.CancelledError], Any]:
        def expire(args: tuple[Any, ...], _exc: asyncio.CancelledError) -> Any:
            drop_now(args[0])
            return result

        return expire

    if statement is not None:
        for name, what in (
            ("do_execute", "a statement"),
            ("do_executemany", "a statement"),
            ("do_execute_no_params", "a statement"),
            ("do_commit", "a commit"),
            ("do_rollback", "a rollback"),
        ):
            setattr(dialect, name, _bounded(getattr(dialect, name), statement, abandon(what)))
    ping = statement or config.connect_timeout
    if ping is not None:
        dialect.do_ping = _bounded(dialect.do_ping, ping, terminate(False))  # type: ignore[method-assign]
    close = statement or config.connect_timeout or CLOSE_TIMEOUT
    # A close past its time is cancelled, and _closing drops the connection on the cancellation.
    polite = _closing(dialect.do_close, drop_now)
    bounded = _bounded(polite, close, lambda _args, _cancellation: None)
    # A cancellation is handed back to the task rather than raised into the pool; a connection
    # of another event loop, perhaps closed, is closed without it.
    quiet = cancellation.close_quietly(bounded)
    dialect.do_close = loops.close_in_any_loop(quiet, drop_now, dialect.driver)  # type: ignore[method-assign,assignment]


def _closing(
    close: Callable[[Any], None], drop_now: Callable[[Any], None]
) -> Callable[[Any], None]:
    """``close`` (a dialect's polite close) that drops the connection at once if the goodbye
    fails, instead of leaving its socket to the garbage collector.

    A connection the server has already reset (a restart, a failover, an idle timeout) cannot be
    told goodbye; aiomysql then raises ConnectionResetError and keeps its socket. The connection
    was being closed anyway, so that is no error to report. On any other failure, a cancellation
    included, the connection is dropped as well and the error passed on.
    """

    def close_or_drop(connection: Any) -> None:
        try:
            close(connection)
        except OSError:
            drop_now(connection)
        except BaseException:
            drop_now(connection)
            raise

    return close_or_drop


# -- errors that name the bind -----------------------------------------------------------------


def _translator(config: BindConfig) -> Callable[[ExceptionContext], BaseException | None]:
    key, url = config.key, config.url

    def translate(ctx: ExceptionContext) -> BaseException | None:
        orig = ctx.original_exception
        mark = getattr(orig, _TIMEOUT_MARK, None)
        if mark is not None:
            ctx.is_disconnect = True
            return StatementTimeoutError(key, *mark)
        if ctx.is_pre_ping or not isinstance(orig, Exception):
            return None  # pre-ping recovers by itself; a cancellation stays a cancellation
        if ctx.connection is None:  # connecting, with a creator of the application's own
            diagnosis = causes.diagnose(orig)
            return causes.connect_error(
                key, orig, diagnosis, user=url.username, database=url.database
            )
        error = causes.statement_error(
            key, orig, ctx.statement, ctx.parameters, disconnect=ctx.is_disconnect
        )
        if isinstance(error, BindUnavailableError):
            ctx.is_disconnect = True  # the connection is discarded, not returned to the pool
        return error

    return translate


# -- event loops -------------------------------------------------------------------------------


class _LoopAffinePool:
    """Remembers the event loop its connections were made in and refuses any other one."""

    _asyncbind_key: BindKey = None
    _asyncbind_loop: asyncio.AbstractEventLoop | None = None

    def _do_get(self) -> Any:
        loop = asyncio.get_running_loop()
        owner = self._asyncbind_loop
        if owner is not loop:
            if owner is not None:
                raise WrongEventLoopError(self._asyncbind_key)
            self._asyncbind_loop = loop
        try:
            return super()._do_get()  # type: ignore[misc]
        except sa_exc.TimeoutError as exc:
            raise PoolTimeoutError(self._asyncbind_key, getattr(self, "_timeout", None)) from exc

    def recreate(self) -> Any:
        new = super().recreate()  # type: ignore[misc]
        new._asyncbind_key = self._asyncbind_key
        return new


_AFFINE: dict[type[sa_pool.Pool], type[sa_pool.Pool]] = {}


def loop_affine_pool(poolclass: type[sa_pool.Pool]) -> type[sa_pool.Pool]:
    """``poolclass`` made to refuse use from a second event loop.

    It logs under ``poolclass``'s own logger, so that it is quiet or verbose exactly when
    SQLAlchemy's pools are (the level of the "sqlalchemy" loggers, ``echo_pool``).
    """
    affine = _AFFINE.get(poolclass)
    if affine is None:
        name = f"LoopAffine{poolclass.__name__}"
        namespace = {"_sqla_logger_namespace": _logger_name(poolclass)}
        affine = _AFFINE[poolclass] = type(name, (_LoopAffinePool, poolclass), namespace)
    return affine


def _logger_name(poolclass: type[sa_pool.Pool]) -> str:
    """The name of the logger SQLAlchemy gives ``poolclass``'s pools: its private
    ``_sqla_logger_namespace`` if set, else the class's module and name (sqlalchemy.log)."""
    namespace: str | None = getattr(poolclass, "_sqla_logger_namespace", None)
    return namespace or f"{poolclass.__module__}.{poolclass.__name__}"


def install(engine: AsyncEngine, config: BindConfig) -> None:
    """Wire the guards into a new engine of ``config``'s bind."""
    sync_engine = engine.sync_engine
    if isinstance(sync_engine.pool, _LoopAffinePool):
        sync_engine.pool._asyncbind_key = config.key
    sa.event.listen(sync_engine, "handle_error", _translator(config))
    loops.remember_loops(sync_engine)
    # The drop is made before the dialect's methods are bounded (see _dropper).
    drop_now = _dropper(sync_engine.dialect)
    _install_timeouts(sync_engine.dialect, config, drop_now)
    if cancellation.resets_returned_connections(config.engine_options):
        cancellation.reset_quietly(
            sync_engine,
            sync_engine.dialect.do_rollback,
            drop_now,
            timed_out=lambda exc: hasattr(exc, _TIMEOUT_MARK),
        )
