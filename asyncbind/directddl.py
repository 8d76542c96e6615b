"""DDL on asyncpg in one round trip instead of three.

SQLAlchemy's asyncpg adapter prepares every statement before running it, and closes the prepared
statement once the next DDL has made it stale: three round trips for each CREATE or DROP, where
asyncpg's own ``execute()`` sends a statement without parameters in one (PostgreSQL's simple query
protocol). ``create_all`` of 20 tables sends 40 such statements.

:func:`listener`, a ``do_execute`` listener on asyncpg engines, sends DDL that way once
SQLAlchemy has begun the connection's transaction; everything else, and DDL outside a
transaction (which must begin one first), goes SQLAlchemy's way. SQLAlchemy's events around the
statement (``before_cursor_execute``, ``after_cursor_execute``, echo, DDL events) run as before,
and a driver error becomes the same SQLAlchemy error it would have been.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from . import internals

__all__ = ["applies", "listener", "with_direct_ddl"]


def applies(dialect: sa.Dialect) -> bool:
    """Whether ``dialect``'s driver has the one-round-trip path (asyncpg)."""
    return dialect.driver == "asyncpg"


def listener(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    """A ``do_execute`` listener: send ``statement`` with asyncpg's ``execute()`` if it is DDL
    inside a transaction, and say so (True); otherwise leave it to SQLAlchemy (False)."""
    if not context.isddl or parameters:
        return False
    connection = context.root_connection.connection.dbapi_connection
    if not connection.driver_connection.is_in_transaction():
        return False
    try:
        connection.run_async(lambda driver: driver.execute(statement))
    except Exception as error:
        internals.raise_as_dbapi_error(connection, error)
    return True


def with_direct_ddl(do_execute: Callable[..., Any]) -> Callable[..., Any]:
    """``do_execute`` (a dialect's method) with DDL sent by :func:`listener`'s path, for a
    ``do_execute`` listener that runs the cursor call itself (see :mod:`asyncbind.timeouts`)."""

    def execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        if context is None or not listener(cursor, statement, parameters, context):
            do_execute(cursor, statement, parameters, context)

    return execute
