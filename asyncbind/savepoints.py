"""SQLite savepoints inside a transaction: releasing one commits nothing, a rollback undoes it.

Python's sqlite3, in its default transaction control, sends ``BEGIN`` only before an INSERT,
UPDATE, DELETE or REPLACE. A SAVEPOINT sent first on a connection (``begin_nested()`` before any
write there, or a session that joins a connection with ``join_transaction_mode=
"create_savepoint"``) then opens SQLite's outermost transaction itself, and its RELEASE commits:
the rollback of the transaction around it undoes nothing.

:func:`begin_first` wraps SQLite engines' ``do_savepoint`` (a dialect method, as
:mod:`asyncbind.internals` replaces others) to send ``BEGIN`` before such a SAVEPOINT, when the
driver's connection is in no transaction. Not a ``savepoint`` connection event: a connection event
listener of any kind puts every statement of the engine on SQLAlchemy's slower path with events
(about a tenth more work per lookup). The driver's
``commit()`` and ``rollback()`` end that transaction as they end one it began itself. Everything
else stays as the driver does it: a transaction with no savepoint begins at its first write (and
takes SQLite's locks from there), and a connection in autocommit mode (SQLAlchemy's
``isolation_level="AUTOCOMMIT"``, the driver's ``isolation_level`` None) is left alone.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

__all__ = ["applies", "begin_first"]


def applies(dialect: sa.Dialect) -> bool:
    """Whether ``dialect``'s binds get :func:`begin_first` (SQLite's aiosqlite)."""
    return dialect.driver == "aiosqlite"


def begin_first(
    do_savepoint: Callable[[sa.Connection, str], None],
) -> Callable[[sa.Connection, str], None]:
    """``do_savepoint`` (the dialect's) sending ``BEGIN`` first, if the SAVEPOINT would open the
    transaction."""

    def savepoint(connection: sa.Connection, name: str) -> None:
        driver = connection.connection.driver_connection  # aiosqlite's, which reads sqlite3's
        if driver is not None and driver.isolation_level is not None and not driver.in_transaction:
            connection.exec_driver_sql("BEGIN")
        do_savepoint(connection, name)

    return savepoint
