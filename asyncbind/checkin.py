"""The last check before a connection goes back into its pool: is the server still in a transaction?

SQLAlchemy ends the transactions it knows about when a connection is returned (reset on return).
A transaction opened on the driver connection itself (asyncpg's ``Connection.transaction()``, a
raw ``BEGIN``) is invisible to it, and on asyncpg its rollback does nothing for such a transaction.
The connection would go back into the pool with the server still in that transaction, and every
later transaction on it would become a savepoint that never commits: acknowledged commits, no
rows. So after SQLAlchemy's reset, every check-in asks the driver whether the server is still in a
transaction, and a connection that is (or whose driver has lost track) is discarded, so that the
pool opens a new one in its place.

The question is an attribute read, with no I/O. It runs in SQLAlchemy's ``checkin`` pool event,
which comes after the reset and only for connections that return to the pool: SQLAlchemy never
checks in a connection of an async driver from outside the event loop (one garbage-collected
unreturned is detached and terminated instead), and where SQLAlchemy discards a connection
outside the loop, its ``terminate`` does no I/O either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry

from .config import BindKey
from .exceptions import bind_name
from .internals import asyncpg_transaction_open

__all__ = ["DRIVERS", "transaction_check"]

logger = logging.getLogger("asyncbind")


def _mysql_transaction_open(driver: Any) -> bool:
    # The SERVER_STATUS_IN_TRANS flag of the server's last OK or EOF packet (aiomysql, asyncmy).
    return bool(driver.get_transaction_status())


def _aiosqlite_transaction_open(driver: Any) -> bool:
    # sqlite3's Connection.in_transaction: not in autocommit mode, read without a query.
    return bool(driver.in_transaction)


#: For each driver asyncbind checks: whether its connection is (or may be) in a transaction.
DRIVERS: dict[str, Callable[[Any], bool]] = {
    # Reads asyncpg's private _top_xact as well: see asyncbind.internals.
    "asyncpg": asyncpg_transaction_open,
    "aiomysql": _mysql_transaction_open,
    "asyncmy": _mysql_transaction_open,
    "aiosqlite": _aiosqlite_transaction_open,
}


def transaction_check(
    driver: str, key: BindKey
) -> Callable[[Any, ConnectionPoolEntry], None] | None:
    """A pool ``checkin`` listener that discards connections of ``driver`` (bind ``key``) that
    come back to the pool inside a transaction; None for drivers it does not know.

    Listened for on the engine, it stays when the pool is recreated (``dispose()``) and covers
    ``execution_options()`` copies.
    """
    in_transaction = DRIVERS.get(driver)
    if in_transaction is None:
        return None

    def check(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is None:  # already invalidated
            return
        try:
            suspect = in_transaction(record.driver_connection)
        except Exception:  # a driver that cannot answer cannot be trusted either
            suspect = True
        if suspect:
            logger.info(
                "%s: a connection came back to the pool inside a transaction that "
                "SQLAlchemy did not end (one opened on the driver connection itself?); it was "
                "discarded and will be replaced",
                bind_name(key, start=True),
            )
            record.invalidate()

    return check
