"""Read-only binds: writes refused before they are sent, and the database's refusal named too.

A bind configured with ``read_only=True`` refuses writes twice. First asyncbind: the session's
router refuses a flush or a routed INSERT / UPDATE / DELETE / DDL, and every statement that
reaches a read-only engine by another path (``bind_arguments={"bind_key": ...}``, ``bind=``,
``session.connection()``, ``engine.connect()`` / ``engine.begin()``) is checked by a
``before_execute`` listener on that engine. Then the database: the connection itself is read-only
(see :mod:`asyncbind.engines`), so raw SQL that writes is refused there, and that refusal becomes
a :class:`~asyncbind.exceptions.ReadOnlyBindError` as well.

The listeners go on read-only engines only: writable binds pay nothing.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import BindKey
from .exceptions import ReadOnlyBindError

__all__ = ["install", "is_refusal", "refusal"]

_ARTICLES = {"INSERT": "an", "UPDATE": "an"}
#: MySQL / MariaDB: "Cannot execute statement in a READ ONLY transaction".
_MYSQL_READ_ONLY = 1792
#: PostgreSQL: read_only_sql_transaction.
_POSTGRESQL_READ_ONLY = "25006"
#: SQLite: SQLITE_READONLY, the low byte of its extended codes ("attempt to write a readonly
#: database").
_SQLITE_READ_ONLY = 8


def refusal(key: BindKey, clause: Any, owner: str | None = None) -> ReadOnlyBindError | None:
    """The error that refuses ``clause`` on read-only bind ``key``, or None when it does not write.

    Writes are DML (INSERT, UPDATE, DELETE, ORM-enabled or not) and DDL. ``owner`` names what the
    statement touches (``"model 'User'"``); by default its table.
    """
    if isinstance(clause, sa.schema.ExecutableDDLElement):
        return ReadOnlyBindError(key, f"DDL on {owner or _ddl_target(clause)}")
    if getattr(clause, "is_dml", False):
        verb = type(clause).__name__.upper()
        what = f"{_ARTICLES.get(verb, 'a')} {verb} statement on {owner or _dml_target(clause)}"
        return ReadOnlyBindError(key, what)
    return None


def _dml_target(clause: Any) -> str:
    table = getattr(clause, "table", None)
    name = getattr(table, "description", None)
    return f"table {name!r}" if name else "a table"


def _ddl_target(clause: Any) -> str:
    target = getattr(clause, "target", None)
    table = getattr(target, "table", target)
    name = getattr(table, "description", None) or getattr(table, "name", None)
    return f"{name!r}" if isinstance(name, str) else "the database"


def is_refusal(backend: str, error: BaseException) -> bool:
    """Whether ``error`` (a driver's exception) is ``backend``'s refusal to write on a read-only
    connection or database."""
    if backend == "postgresql":
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        return bool(state == _POSTGRESQL_READ_ONLY)
    if backend in ("mysql", "mariadb"):
        args: tuple[Any, ...] = error.args
        return bool(args) and args[0] == _MYSQL_READ_ONLY
    if backend == "sqlite":
        code = getattr(error, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF == _SQLITE_READ_ONLY
    return False


def _message(error: BaseException) -> str:
    """The first line of a driver error's message, without MySQL drivers' error number."""
    args: tuple[Any, ...] = error.args
    if len(args) == 2 and isinstance(args[0], int):
        text = str(args[1])
    else:
        text = str(error)
    return (text.splitlines() or [type(error).__name__])[0]


def install(engine: AsyncEngine, key: BindKey) -> None:
    """Refuse writes on ``engine`` (read-only bind ``key``) before they are sent, and turn the
    database's refusal of the ones that could not be recognised into ReadOnlyBindError."""
    backend = engine.dialect.name

    def before_execute(
        _conn: sa.Connection, clause: Any, _multiparams: Any, _params: Any, _options: Any
    ) -> None:
        error = refusal(key, clause)
        if error is not None:
            raise error

    def handle_error(ctx: ExceptionContext) -> BaseException | None:
        original = ctx.original_exception
        if ctx.is_disconnect or not is_refusal(backend, original):
            return None
        return ReadOnlyBindError(key, f"a write ({_message(original)})", sent=True)

    sa.event.listen(engine.sync_engine, "before_execute", before_execute)
    sa.event.listen(engine.sync_engine, "handle_error", handle_error)
