"""Everything asyncbind relies on that SQLAlchemy, the drivers or asyncio offer no public way to do.

Engines and their connections otherwise go through documented surfaces: ``create_async_engine()``
arguments, pool events (``connect``, ``reset``, ``checkin``), connection and dialect events
(``before_execute``, ``handle_error``, ``do_execute``...), public methods. What is left has no
such surface, and each piece of it is one small function or class here, so that this module is
the whole list for them (the session side keeps its few next to their use, each with its test).
``tests/test_internals.py`` fails if a library changes what one of them relies on.

SQLAlchemy:

- :func:`replace_dialect_method`: ``do_commit``, ``do_rollback``, ``do_ping`` and ``do_close``
  have no event around them; bounding them in time and closing a connection of another event loop
  mean replacing them on the engine's own dialect. ``create_xid`` (part of the ``Dialect``
  interface, with no argument to pass through ``Session(twophase=True)``) is replaced the same
  way, so that two-phase transaction ids name the application (``tests/test_twophase.py``
  checks the ids the events see). SQLite's ``do_savepoint`` too (:mod:`asyncbind.savepoints`):
  its ``savepoint`` connection event would do, but a connection event listener of any kind puts
  every statement of the engine on SQLAlchemy's slower path with events.
- :class:`BindPool`: the pool's checkout, the private ``Pool._do_get()``, where a pool is claimed
  by one event loop and where its ``TimeoutError`` is raised; and its check-in, the private
  ``Pool._do_return_conn()``, where a connection returned to a disposed pool is closed.
- :func:`bind_pool_class`: the pool logger's name, the private ``_sqla_logger_namespace``.
- :func:`quiet_cancelled_connects`: the record the pool's private
  ``_ConnectionRecord.__connect()`` logs when opening a connection fails ("Error on connect()"),
  which a cancellation must not leave.
- :func:`default_poolclass`: ``DefaultDialect.get_pool_class()``, which is not part of the
  ``Dialect`` interface.
- :data:`EXECUTE_OPTIONS`, :data:`STREAM_OPTIONS`, :func:`ensure_sync_result`: what
  ``AsyncSession.execute()``, ``scalar()`` and ``stream()`` add around the sync session's call
  (buffered or streamed rows; no server-side cursor behind a buffered result), for the task
  check of :mod:`~asyncbind.tasksafety` to make that call itself instead of awaiting SQLAlchemy's
  method, a coroutine more on every resumption of every await of a statement.
- :func:`add_connector`: the ``async_creator_fn`` argument of SQLAlchemy's adapted DBAPI
  ``connect()``, which hands the connect function the URL's arguments (the public
  ``async_creator`` gets none).
- :func:`raise_as_dbapi_error`: the adapted connection's ``_handle_exception()``, which turns a
  driver's error into the DBAPI error SQLAlchemy wraps, for a driver call made through the public
  ``run_async()``.

Drivers and asyncio:

- :func:`aiomysql_connect`: ``aiomysql.Connection._connect()``, to close a half-made connection.
- :func:`asyncpg_transaction_open`: asyncpg's ``Connection._top_xact``.
- :func:`mysql_result_unread`: aiomysql's and asyncmy's ``Connection._result``.
- :func:`transport_of`: asyncpg's ``Connection._transport``, aiomysql's ``Connection._writer``,
  asyncmy's ``Connection._transport``.
- :func:`release_transport`: asyncio's ``_call_connection_lost()`` of socket transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import log as sa_log
from sqlalchemy import pool as sa_pool
from sqlalchemy.ext.asyncio import result as _async_result
from sqlalchemy.ext.asyncio import session as _async_session
from sqlalchemy.util import immutabledict

from .config import BindKey
from .exceptions import PoolTimeoutError, WrongEventLoopError
from .timeouts import sharing_close_timeout

__all__ = [
    "DIALECT_METHODS",
    "EXECUTE_OPTIONS",
    "STREAM_OPTIONS",
    "BindPool",
    "add_connector",
    "aiomysql_connect",
    "asyncpg_transaction_open",
    "bind_pool_class",
    "default_poolclass",
    "ensure_sync_result",
    "has_transport",
    "name_pool",
    "quiet_cancelled_connects",
    "raise_as_dbapi_error",
    "release_transport",
    "replace_dialect_method",
    "transport_of",
]


# -- SQLAlchemy ------------------------------------------------------------------------------

#: The dialect methods asyncbind replaces: SQLAlchemy calls each through the engine's dialect
#: (a commit; a rollback, a pool's reset on return included; pre-ping; closing a pooled
#: connection; the id of a two-phase transaction) and has no event around any of them.
DIALECT_METHODS = frozenset(
    {
        "do_commit",
        "do_rollback",
        "do_ping",
        "do_close",
        "do_terminate",
        "do_savepoint",
        "create_xid",
    }
)


def replace_dialect_method(dialect: sa.Dialect, name: str, method: Callable[..., Any]) -> None:
    """Make ``method`` the dialect's ``name`` (one of :data:`DIALECT_METHODS`).

    Set on the instance, it is the engine's alone: every engine has a dialect of its own.
    """
    if name not in DIALECT_METHODS:
        raise ValueError(f"{name!r} is not one of {sorted(DIALECT_METHODS)}")
    setattr(dialect, name, method)


class BindPool:
    """Mixed into the pool class of every bind (:func:`bind_pool_class`): the pool belongs to the
    event loop that first takes a connection from it, names its bind when it stays exhausted,
    and closes the connections returned to it once it has been disposed.

    The first two happen in the pool's checkout, the private ``_do_get()``, because no pool event
    comes early enough. ``checkout`` fires once a connection has left the pool's queue, whose
    asyncio primitives belong to one loop, and has been pinged or recycled, which is I/O in the
    wrong loop; and SQLAlchemy raises the pool's ``TimeoutError`` inside ``_do_get()``, where
    neither pool events nor ``handle_error`` see it. ``dispose()`` replaces the pool
    (``recreate()``), so a disposed bind belongs to no loop until it is used again.

    A connection that a session held while the pool was disposed comes back to the disposed pool,
    which nobody takes connections from any more: SQLAlchemy would keep it there, open, until the
    garbage collector finds the pool, outside the event loop (an unclosed-connection warning, the
    server's connection open meanwhile). The pool's check-in, the private ``_do_return_conn()``,
    closes it instead; the ``checkin`` event does not know which pool the connection is
    returned to.

    ``dispose()`` closes the idle connections one after the other, each bounded by the bind's
    close timeout (:func:`asyncbind.timeouts.bounded_close`). They share one timeout
    (:func:`asyncbind.timeouts.sharing_close_timeout`): on a server that has stopped answering,
    the first close waits it out and the rest are dropped at once, so that a pool of twenty
    connections does not take twenty timeouts to dispose.
    """

    _asyncbind_key: BindKey = None
    _asyncbind_replica: int = 0
    _asyncbind_tenant: str | None = None
    _asyncbind_loop: asyncio.AbstractEventLoop | None = None
    _asyncbind_disposed = False

    def _do_get(self) -> Any:
        loop = asyncio.get_running_loop()
        owner = self._asyncbind_loop
        if owner is not loop:
            if owner is not None:
                raise WrongEventLoopError(
                    self._asyncbind_key,
                    replica=self._asyncbind_replica,
                    tenant=self._asyncbind_tenant,
                )
            self._asyncbind_loop = loop
        try:
            return super()._do_get()  # type: ignore[misc]
        except sa_exc.TimeoutError as exc:
            # QueuePool's public timeout(), size() and overflow(). It times out when every
            # overflow connection is in use, so overflow() is then its max_overflow.
            queue = self if isinstance(self, sa_pool.QueuePool) else None
            raise PoolTimeoutError(
                self._asyncbind_key,
                queue.timeout() if queue else None,
                pool_size=queue.size() if queue else None,
                max_overflow=queue.overflow() if queue else None,
                replica=self._asyncbind_replica,
                tenant=self._asyncbind_tenant,
            ) from exc

    def _do_return_conn(self, record: sa_pool.ConnectionPoolEntry) -> None:
        try:
            if self._asyncbind_disposed:
                record.close()  # through the dialect's do_close, in the event loop
        finally:
            super()._do_return_conn(record)  # type: ignore[misc]

    def dispose(self) -> None:
        with sharing_close_timeout():  # one close timeout for all, not one per connection
            super().dispose()  # type: ignore[misc]
        # Set once every idle connection is closed: a connection returned meanwhile went into
        # the pool, and dispose() closed it with the others.
        self._asyncbind_disposed = True

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop this pool belongs to; None until a connection is first taken from it."""
        return self._asyncbind_loop

    def recreate(self) -> Any:
        new = super().recreate()  # type: ignore[misc]
        new._asyncbind_key = self._asyncbind_key
        new._asyncbind_replica = self._asyncbind_replica
        new._asyncbind_tenant = self._asyncbind_tenant
        return new


_BIND_POOLS: dict[type[sa_pool.Pool], type[sa_pool.Pool]] = {}


def bind_pool_class(poolclass: type[sa_pool.Pool]) -> type[sa_pool.Pool]:
    """``poolclass`` with :class:`BindPool` mixed in, one class per pool class.

    It logs under ``poolclass``'s own logger, so that it is quiet or verbose exactly when
    SQLAlchemy's pools are (``echo_pool``, the level of the "sqlalchemy" loggers): SQLAlchemy
    names a class's logger after its private ``_sqla_logger_namespace`` if set, else after the
    class's module and name.
    """
    made = _BIND_POOLS.get(poolclass)
    if made is None:
        namespace: str | None = getattr(poolclass, "_sqla_logger_namespace", None)
        logger_name = namespace or f"{poolclass.__module__}.{poolclass.__name__}"
        made = type(
            f"Bind{poolclass.__name__}",
            (BindPool, poolclass),
            {"_sqla_logger_namespace": logger_name, "__module__": __name__},
        )
        _BIND_POOLS[poolclass] = made
    return made


def name_pool(
    pool: sa_pool.Pool, key: BindKey, replica: int = 0, tenant: str | None = None
) -> None:
    """Tell ``pool``, if it is a :class:`BindPool`, the bind its errors name (and the number of
    the bind's read replica it connects to, 0 for the primary; or the tenant of a group)."""
    if isinstance(pool, BindPool):
        pool._asyncbind_key = key
        pool._asyncbind_replica = replica
        pool._asyncbind_tenant = tenant


#: What SQLAlchemy's pool logs (at DEBUG) when opening a connection fails, the error being its
#: one argument: a cancellation's message is empty.
CONNECT_ERROR_RECORD = "Error on connect(): %s"


class _CancelledConnects(logging.Filter):
    """Drops the pool's :data:`CONNECT_ERROR_RECORD` of a cancelled connection attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        cancelled = (
            record.msg == CONNECT_ERROR_RECORD
            and isinstance(record.args, tuple)
            and bool(record.args)
            and isinstance(record.args[0], asyncio.CancelledError)
        )
        return not cancelled


_CANCELLED_CONNECTS = _CancelledConnects()


def quiet_cancelled_connects(pool: sa_pool.Pool) -> None:
    """Keep out of ``pool``'s log the record SQLAlchemy writes when a connection attempt is
    cancelled: its pool logs every failure to connect, a cancellation included, before raising
    it, and no pool event comes first. A filter on the pool's logger (``logging``'s own hook)
    drops that record only; the other failures are still logged. A pool that ``dispose()``
    makes logs under the same logger, so the filter stays."""
    logger = pool.logger
    if isinstance(logger, sa_log.InstanceLogger):  # under echo_pool, around the named logger
        logger = logger.logger
    logger.addFilter(_CANCELLED_CONNECTS)  # logging adds a filter only once


def default_poolclass(url: sa.URL) -> type[sa_pool.Pool] | None:
    """The pool class ``create_async_engine(url)`` would choose, or None for a dialect that
    cannot say (``create_async_engine()`` then chooses)."""
    try:
        dialect_cls = url.get_dialect().get_async_dialect_cls(url)
        poolclass: type[sa_pool.Pool] = dialect_cls.get_pool_class(url)  # type: ignore[attr-defined]
        return poolclass
    except Exception:  # an unusual dialect
        return None


#: The execution options ``AsyncSession.execute()`` and ``scalar()`` add to a statement's (rows
#: fetched in the greenlet, so that the result needs no more I/O), and those of ``stream()``.
EXECUTE_OPTIONS: immutabledict[str, Any] = _async_session._EXECUTE_OPTIONS
STREAM_OPTIONS: immutabledict[str, Any] = _async_session._STREAM_OPTIONS
#: ``AsyncSession.execute()``'s last step: refuses (and closes) a result on a server-side cursor,
#: which only ``stream()`` can read, and closes the cursor of a buffered one; the result is the
#: one it was given.
ensure_sync_result: Callable[[Any, Any], Awaitable[object]] = _async_result._ensure_sync_result


def add_connector(connect_args: dict[str, Any], connector: Callable[..., Any]) -> None:
    """Have the engine open its driver connections with ``connector``, which receives the
    arguments the driver's own ``connect()`` would (host, user, database... from the URL, and
    ``connect_args``); unless ``connect_args`` names a connect function already."""
    connect_args.setdefault("async_creator_fn", connector)


# -- drivers ---------------------------------------------------------------------------------


def raise_as_dbapi_error(connection: Any, error: Exception) -> NoReturn:
    """Raise ``error``, raised by a driver call made with ``connection.run_async()``, as the
    adapted DBAPI error SQLAlchemy's own cursor call would have raised (which SQLAlchemy then
    wraps, e.g. as :class:`sqlalchemy.exc.ProgrammingError`)."""
    connection._handle_exception(error)
    raise error  # _handle_exception() always raises; this is for a version where it would not


def aiomysql_connect() -> Callable[..., Any]:
    """``aiomysql.connect()``, but a connection cut short mid-handshake (cancelled, say) closes
    its socket instead of leaving it to the garbage collector."""
    import aiomysql

    async def connect(*args: Any, **kwargs: Any) -> Any:
        conn = aiomysql.Connection(*args, **kwargs)
        try:
            await conn._connect()
        except BaseException:
            conn.close()
            raise
        return conn

    return connect


def asyncpg_transaction_open(driver: Any) -> bool:
    """Whether an asyncpg connection is in a transaction, or believes it is.

    ``is_in_transaction()`` is the server's view (from its last ReadyForQuery). asyncpg also keeps
    the transaction that its ``Connection.transaction()`` started as ``_top_xact``, even one whose
    BEGIN was cancelled before the server saw it; the next ``transaction()`` on that connection
    would then send a SAVEPOINT. No public method tells.
    """
    return bool(driver.is_in_transaction()) or driver._top_xact is not None


def mysql_result_unread(driver: Any) -> bool:
    """Whether an aiomysql or asyncmy connection has a result of a server-side cursor (an
    unbuffered result) not read to its end: the next command sent on it first reads the rest.

    ``Connection._result.unbuffered_active``; no public method tells.
    """
    result = driver._result
    return result is not None and bool(result.unbuffered_active)


#: Each driver connection's transport.
_TRANSPORTS: dict[str, Callable[[Any], Any]] = {
    "asyncpg": lambda connection: connection._transport,
    "aiomysql": lambda connection: connection._writer and connection._writer.transport,
    "asyncmy": lambda connection: connection._transport,
}


def transport_of(driver: str, driver_connection: Any) -> asyncio.Transport | None:
    """The transport of a connection of ``driver``, or None if that driver is not known here or
    the connection has none (closed)."""
    transport_getter = _TRANSPORTS.get(driver)
    if transport_getter is None:
        return None
    transport: asyncio.Transport | None = transport_getter(driver_connection)
    return transport


def has_transport(driver: str) -> bool:
    """Whether :func:`transport_of` knows ``driver``'s connections."""
    return driver in _TRANSPORTS


def release_transport(transport: asyncio.Transport) -> None:
    """Close ``transport``, whose event loop is closed, without that loop.

    ``abort()`` marks the transport closed, then schedules its ``_call_connection_lost()`` on its
    loop, which a closed loop refuses ("Event loop is closed"). That callback tells the protocol
    and closes the socket; it runs here instead. A transport without it keeps its socket until
    the garbage collector closes it.
    """
    with contextlib.suppress(RuntimeError):
        transport.abort()
    connection_lost = getattr(transport, "_call_connection_lost", None)
    sock = transport.get_extra_info("socket")
    if connection_lost is not None and sock is not None and sock.fileno() != -1:
        connection_lost(None)
