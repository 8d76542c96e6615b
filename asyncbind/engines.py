"""Each bind's :class:`~sqlalchemy.ext.asyncio.AsyncEngine`, made and wired in one place.

:func:`engine_arguments` works out what the engine is created with: the URL and the dialect's
defaults, read-only connections, the connector, the pool class, the reset on return.
:func:`make_engine` creates it and wires in, top to bottom, everything asyncbind adds to an
engine: errors that name the bind, event loops, SQLite's savepoints kept inside its transaction,
rollbacks after a stream left unread on MySQL, timeouts, DDL in one round trip on asyncpg, how
connections close, the reset and check of returned connections, the refusal of writes on
read-only binds. The other modules provide those pieces as functions and listeners; only this
one attaches them to an engine.
What has no public hook goes through :mod:`asyncbind.internals`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import (
    cancellation,
    causes,
    checkin,
    closing,
    connector,
    directddl,
    internals,
    loops,
    pgbouncer,
    readonly,
    registry,
    savepoints,
    stopping,
    timeouts,
)
from .config import BindConfig
from .exceptions import ConfigError, bind_name
from .urls import is_memory_sqlite

__all__ = [
    "DRIVER_EXTRAS",
    "MYSQL_POOL_RECYCLE",
    "engine_arguments",
    "holds_the_database",
    "make_engine",
]

logger = logging.getLogger("asyncbind")

#: The extra that installs each driver asyncbind picks for a URL that names none.
DRIVER_EXTRAS = {
    "asyncpg": "postgresql",
    "aiomysql": "mysql",
    "asyncmy": "mysql",
    "pymysql": "mysql",
}

#: The drivers whose server-side cursors' results arrive in full whether read or not.
_UNBUFFERED_DRIVERS = frozenset({"aiomysql", "asyncmy"})

#: MySQL closes idle connections after ``wait_timeout`` (8 hours by default); recycle well before.
MYSQL_POOL_RECYCLE = 7200

#: The pool options that only some pool classes take, and those classes (and their subclasses).
_POOL_SIZING: dict[str, tuple[type[sa_pool.Pool], ...]] = {
    "pool_size": (sa_pool.QueuePool, sa_pool.SingletonThreadPool),
    "max_overflow": (sa_pool.QueuePool,),
    "pool_timeout": (sa_pool.QueuePool,),
    "pool_use_lifo": (sa_pool.QueuePool,),
}


def engine_arguments(config: BindConfig) -> tuple[sa.URL, dict[str, Any]]:
    """The URL and keyword arguments that ``config``'s engine is created with.

    Dialect defaults come first and the bind's options override them: MySQL and MariaDB get
    ``pool_recycle=7200`` and ``charset=utf8mb4``; in-memory SQLite gets one shared connection
    (``StaticPool``), so that every session of the bind sees the same database. Then asyncbind's
    own: read-only connections where the driver allows it, the connector (``connect_timeout``),
    the pool class that knows its bind and event loop, and the reset on return of
    :mod:`asyncbind.cancellation` unless the bind chose its own.
    """
    url = config.url
    options: dict[str, Any] = {}
    backend = url.get_backend_name()
    if url.get_driver_name() == "aiomysql" and not _latin1(url.password):
        raise ConfigError(
            f"{_name(config)}: its password has characters outside latin-1, "
            "which aiomysql cannot send. Change the password, or use 'mysql+asyncmy://'."
        )
    if backend in ("mysql", "mariadb"):
        if "pool" not in config.engine_options:  # a pool made already takes no pool options
            options["pool_recycle"] = MYSQL_POOL_RECYCLE
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
    elif is_memory_sqlite(url):
        options["poolclass"] = sa.StaticPool
    options.update(config.engine_options)

    connect_args = dict(options.get("connect_args") or {})
    connector.check_connect_args(
        config.key,
        url.get_driver_name(),
        connect_args,
        shared="connect_args" in config.shared_options,
        replica=config.replica,
        tenant=config.tenant,
    )
    if config.pgbouncer:
        pgbouncer.pgbouncer_connect_args(config.key, url, connect_args)
    if config.read_only:
        url = readonly.read_only_connections(
            config.key, url, connect_args, config.replica, config.tenant
        )
    connect = connector.connector(
        url.get_driver_name(), config.key, config.connect_timeout, config.replica, config.tenant
    )
    if connect is not None:
        internals.add_connector(connect_args, connect)
    if connect_args:
        options["connect_args"] = connect_args
    if "pool" in options:
        _fit_pool_sizing(config, options, None)
    else:
        poolclass = options.get("poolclass") or internals.default_poolclass(url)
        if poolclass is not None:
            _fit_pool_sizing(config, options, poolclass)
        if poolclass is not None and not issubclass(poolclass, sa_pool.NullPool):
            options["poolclass"] = internals.bind_pool_class(poolclass)
    if cancellation.resets_returned_connections(config.engine_options):
        options["pool_reset_on_return"] = None  # asyncbind resets them (see make_engine)
    return url, options


def _fit_pool_sizing(
    config: BindConfig, options: dict[str, Any], poolclass: type[sa_pool.Pool] | None
) -> None:
    """Leave out of ``options`` the shared pool sizing options that the bind's pool (of class
    ``poolclass``; None for a ``pool`` made already) does not take: in-memory SQLite's
    StaticPool, a NullPool. The bind's own are a :class:`ConfigError`."""
    for name, takers in _POOL_SIZING.items():
        if name not in options or (poolclass is not None and issubclass(poolclass, takers)):
            continue
        pool = f"its pool class {poolclass.__name__}" if poolclass else "the pool it was given"
        subject = _name(config)
        if name in config.shared_options:
            del options[name]
            logger.debug("%s: shared engine option %r left out, for %s", subject, name, pool)
        else:
            raise ConfigError(
                f"{subject}: option {name!r} in its options does not apply to {pool}, which "
                f"does not take it. Remove it from the bind's options."
            )


def make_engine(config: BindConfig) -> AsyncEngine:
    """Create the engine of one bind, with everything asyncbind adds wired in; no connection is
    made until it is used."""
    url, options = engine_arguments(config)
    engine = _create(config, url, options)
    sync = engine.sync_engine
    dialect = sync.dialect
    key = config.key
    replica = config.replica  # a read replica's errors name it (0: the bind's own engine)
    tenant = config.tenant  # and a tenant's (None: not a tenant group's engine)
    registry.register(engine, config)
    # For PoolTimeoutError and WrongEventLoopError.
    internals.name_pool(sync.pool, key, replica, tenant)
    internals.quiet_cancelled_connects(sync.pool)  # a cancelled connection attempt is no error

    # Read-only binds: writes refused before any SQL is sent, the database's own refusal named,
    # and read-only sessions where the connection could not be made read-only from the start.
    if config.read_only:
        sa.event.listen(sync, "before_execute", readonly.write_listener(key, replica, tenant))
        refused = readonly.refusal_listener(key, dialect.name, replica, tenant)
        sa.event.listen(sync, "handle_error", refused)
        sql = readonly.session_sql(url)
        if sql is not None:
            sa.event.listen(sync, "connect", readonly.session_sql_listener(sql))

    # Errors that name the bind, and the cause where the driver's error tells it.
    sa.event.listen(sync, "handle_error", causes.error_listener(key, url, replica, tenant))

    # Each connection remembers its event loop, so that it can be closed from another.
    if loops.closes_across_loops(dialect.driver):
        sa.event.listen(sync, "connect", loops.remember_loop)

    # What drops a connection is made before the dialect's methods are replaced (see
    # closing.dropper). An in-memory database's one connection is the database: it is never
    # dropped, and a statement cut short on it does not count as a disconnect (keep_database).
    the_database = holds_the_database(sync)
    drop = _keep_open if the_database else closing.dropper(dialect)

    # MySQL and MariaDB: a rollback after a stream left unread drops the connection instead of
    # reading the rest of the result first.
    if dialect.driver in _UNBUFFERED_DRIVERS:
        rollback = closing.rollback_or_drop(
            dialect.do_rollback, drop, internals.mysql_result_unread
        )
        internals.replace_dialect_method(dialect, "do_rollback", rollback)

    # Timeouts.
    statement = config.statement_timeout
    # DDL in one round trip on asyncpg (see directddl), within the statement timeout if any.
    direct = directddl.applies(dialect)
    if statement is not None:
        methods = {"do_execute": directddl.with_direct_ddl(dialect.do_execute)} if direct else {}
        # SQLite: a statement past its time is interrupted and rolled back like a cancelled one
        # (stopping.interrupt_listener), which needs its connection still open.
        statement_drop = _keep_open if stopping.interrupts(sync) else drop
        listeners = timeouts.statement_listeners(dialect, statement, statement_drop, methods)
        for name, listener in listeners.items():
            sa.event.listen(sync, name, listener)
        commit = timeouts.bounded(dialect.do_commit, statement, "a commit", drop)
        rollback = timeouts.bounded(dialect.do_rollback, statement, "a rollback", drop)
        internals.replace_dialect_method(dialect, "do_commit", commit)
        internals.replace_dialect_method(dialect, "do_rollback", rollback)
        sa.event.listen(sync, "handle_error", timeouts.error_listener(key, replica, tenant))
    elif direct:
        sa.event.listen(sync, "do_execute", directddl.listener)
    # A statement given up on (timed out, or its task cancelled) is stopped on the server too.
    if stopping.applies(dialect, pgbouncer=config.pgbouncer):
        sa.event.listen(sync, "connect", stopping.id_listener(dialect.driver))
        sa.event.listen(sync, "handle_error", stopping.listener(key))
    elif stopping.interrupts(sync):
        sa.event.listen(sync, "handle_error", stopping.interrupt_listener)
    ping = statement or config.connect_timeout
    if ping is not None:
        internals.replace_dialect_method(
            dialect, "do_ping", timeouts.bounded_ping(dialect.do_ping, ping, drop)
        )

    # Closing a connection: politely, dropped if the goodbye fails or is cancelled, within a
    # time (one for all the closes of a pool's dispose()); a cancellation handed back to the task
    # rather than raised into the pool; and a connection of another event loop closed without
    # that loop.
    close = closing.close_or_drop(dialect.do_close, drop)
    close = timeouts.bounded_close(
        close, statement or config.connect_timeout or timeouts.CLOSE_TIMEOUT, drop
    )
    close = cancellation.close_quietly(close)
    close = loops.close_in_any_loop(close, drop, dialect.driver)
    internals.replace_dialect_method(dialect, "do_close", close)

    # Connections SQLAlchemy invalidates (a disconnect, a cancelled or timed-out statement):
    # dropped at once. SQLAlchemy's terminate tries a polite close first, which asyncpg lets wait
    # 2 s for a server that may have stopped answering (the caller's timeout would be 2 s late);
    # the stopper ends the statement on the server instead. Behind PgBouncer, where nothing is
    # stopped that way, the polite close stays: it lets asyncpg's cancel request go out.
    if closing.driver_drop(dialect.driver) is not None and not config.pgbouncer:
        internals.replace_dialect_method(dialect, "do_terminate", drop)

    # SQLite: BEGIN before a SAVEPOINT that would otherwise open the transaction (and its
    # RELEASE commit it).
    if savepoints.applies(dialect):
        internals.replace_dialect_method(
            dialect, "do_savepoint", savepoints.begin_first(dialect.do_savepoint)
        )

    # Connections returned to the pool: rolled back (by asyncbind, quietly, unless the bind chose
    # its own reset), then discarded if the server is still in a transaction; an in-memory
    # database's one connection never is.
    if cancellation.resets_returned_connections(config.engine_options):
        reset = cancellation.reset_listener(
            dialect, drop, timeouts.timed_out, discard=not the_database
        )
        sa.event.listen(sync, "reset", reset)
    check = checkin.transaction_check(dialect.driver, key)
    if check is not None and not the_database:
        sa.event.listen(sync, "checkin", check)
    if the_database:
        sa.event.listen(sync, "handle_error", _keep_database)  # the last: it has the last word
    return engine


def holds_the_database(engine: sa.Engine) -> bool:
    """Whether ``engine``'s pool's one connection is the whole database: in-memory SQLite's,
    shared by every session (StaticPool; SingletonThreadPool, one per thread). Discarding that
    connection loses every table."""
    shared = isinstance(engine.pool, sa_pool.StaticPool | sa_pool.SingletonThreadPool)
    return shared and is_memory_sqlite(engine.url)


def _keep_database(ctx: ExceptionContext) -> None:
    """A ``handle_error`` listener for an in-memory database: a statement cut short by a
    cancellation or a timeout leaves its connection in place. SQLAlchemy counts a cancellation
    as a disconnect and would close the connection, and the database with it: every table and
    every committed row gone for all sessions. The statement runs on in aiosqlite's thread and
    what comes next waits for it; the session rolls back as after any error."""
    if ctx.is_disconnect and isinstance(
        ctx.original_exception, asyncio.CancelledError | TimeoutError
    ):
        ctx.is_disconnect = False


def _keep_open(_connection: Any) -> None:
    """What "drops" a connection that is to stay open until its handle_error listeners ran."""


def _create(config: BindConfig, url: sa.URL, options: dict[str, Any]) -> AsyncEngine:
    """``create_async_engine(url, **options)``; what it refuses is a :class:`ConfigError` naming
    the bind, never showing the password."""
    try:
        return create_async_engine(url, **options)
    except ImportError as exc:
        module = exc.name or url.get_driver_name()
        extra = DRIVER_EXTRAS.get(module)
        install = f"pip install 'asyncbind[{extra}]'" if extra else f"pip install {module}"
        raise ConfigError(
            f"{_name(config)}: the driver for {url.drivername!r} is not "
            f"installed (no module {module!r}). Install it: {install}."
        ) from None
    except Exception as exc:  # no I/O has happened: whatever was refused is the configuration
        message = f"{_name(config)}: its engine options were rejected ({_given(config)})"
        fix = "Options are create_async_engine() keyword arguments; check their names and values."
        if any(connector.mentions(exc, password) for password in config.passwords):
            raise ConfigError(f"{message}. {fix}") from None
        raise ConfigError(f"{message}: {str(exc).rstrip('. ')}. {fix}") from exc


def _name(config: BindConfig) -> str:
    """How a message begins that names ``config``'s bind, or the read replica it is of."""
    return bind_name(config.key, start=True, replica=config.replica, tenant=config.tenant)


def _given(config: BindConfig) -> str:
    """The engine options the application gave ``config``'s bind, and where: its own dict, or
    the options shared by every bind."""
    own = sorted(set(config.engine_options) - config.shared_options)
    shared = sorted(config.shared_options)
    parts = []
    if own:
        parts.append(f"its own: {', '.join(own)}")
    if shared:
        parts.append(f"shared by every bind: {', '.join(shared)}")
    return "; ".join(parts) or "none given"


def _latin1(password: object) -> bool:
    return password is None or all(ord(c) < 256 for c in str(password))
