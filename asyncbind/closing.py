"""Ending a connection: dropped at once, or closed politely with a drop when the goodbye fails.

A connection is *dropped* when waiting for the server would only make things late: its statement
timed out (the server has stopped answering), its state is unknown (a cancelled reset), its
goodbye failed, or the rest of a result nobody reads stands before anything else it could be told
(MySQL and MariaDB). Dropping closes the socket with no message to the server. SQLAlchemy's own
``terminate()`` first tries a polite close, which asyncpg lets wait up to 2s for an answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.pool import PoolProxiedConnection

__all__ = ["close_or_drop", "driver_drop", "dropper", "rollback_or_drop"]

#: How a driver's own connection is dropped at once, with no message to the server.
_DRIVER_DROPS: dict[str, Callable[[Any], None]] = {
    "asyncpg": lambda driver_connection: driver_connection.terminate(),
    "aiomysql": lambda driver_connection: driver_connection.close(),
    "asyncmy": lambda driver_connection: driver_connection.close(),
}


def driver_drop(driver: str) -> Callable[[Any], None] | None:
    """What drops a connection of ``driver`` (the driver's own, not SQLAlchemy's adapter) at
    once; None for drivers asyncbind does not know."""
    return _DRIVER_DROPS.get(driver)


def dropper(dialect: sa.Dialect) -> Callable[[Any], None]:
    """What drops a connection of ``dialect`` (SQLAlchemy's DBAPI connection, or the pool's proxy
    of it) at once.

    Made before the dialect's methods are replaced. A dialect with no ``do_terminate()`` of its
    own (psycopg's) inherits one that calls ``do_close()``: that must be the close as it is now,
    not asyncbind's, which drops the connection when closing fails and would lead back here.
    """
    drop = _DRIVER_DROPS.get(dialect.driver)
    if type(dialect).do_terminate is DefaultDialect.do_terminate:
        terminate = dialect.do_close
    else:
        terminate = dialect.do_terminate

    def drop_now(connection: Any) -> None:
        driver_connection = getattr(connection, "driver_connection", None)
        if drop is None or driver_connection is None:
            terminate(connection)
        else:
            drop(driver_connection)

    return drop_now


def close_or_drop(
    close: Callable[[Any], None], drop: Callable[[Any], None]
) -> Callable[[Any], None]:
    """``close`` (a dialect's polite close) that drops the connection at once if the goodbye
    fails, instead of leaving its socket to the garbage collector.

    A connection the server has already reset (a restart, a failover, an idle timeout) cannot be
    told goodbye; aiomysql then raises ConnectionResetError and keeps its socket. The connection
    was being closed anyway, so that is no error to report. On any other failure, a cancellation
    included, the connection is dropped as well and the error passed on.
    """

    def close_connection(connection: Any) -> None:
        try:
            close(connection)
        except OSError:
            drop(connection)
        except BaseException:
            drop(connection)
            raise

    return close_connection


def rollback_or_drop(
    rollback: Callable[[Any], None], drop: Callable[[Any], None], unread: Callable[[Any], bool]
) -> Callable[[Any], None]:
    """``rollback`` (a dialect's ``do_rollback``) that drops the connection instead when a
    result on it was left ``unread`` (its driver connection says so).

    On MySQL and MariaDB a server-side cursor's result (``session.stream()``, ``yield_per``)
    arrives in full whatever the client does: a ROLLBACK sent after a stream was cancelled or left
    early is answered only once the driver has read every remaining row (with a "Previous
    unbuffered result was left incomplete" warning), however many millions. Dropped, the
    connection is invalidated (the pool opens a new one when it needs one) and the server rolls
    its transaction back as the connection ends; the session or connection goes on as after a
    rollback. This applies to rollbacks of a pool's connection (every session's and
    ``AsyncConnection``'s); a bare DBAPI connection is rolled back as before.
    """

    def rollback_connection(connection: Any) -> None:
        if isinstance(connection, PoolProxiedConnection) and connection.is_valid:
            driver_connection = connection.driver_connection
            if driver_connection is not None and unread(driver_connection):
                drop(connection)
                connection.invalidate()
                return
        rollback(connection)

    return rollback_connection
