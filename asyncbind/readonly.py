"""Read-only binds: writes refused before they are sent, and the database's refusal named too.

A bind configured with ``read_only=True`` refuses writes twice. First asyncbind: the session's
router refuses a flush or a routed INSERT / UPDATE / DELETE / DDL, and every statement that
reaches a read-only engine by another path (``bind_arguments={"bind_key": ...}``, ``bind=``,
``session.connection()``, ``engine.connect()`` / ``engine.begin()``) is checked by a
``before_execute`` listener on that engine (:func:`write_listener`). Then the database: the
connection itself is read-only (:func:`read_only_connections`, :func:`session_sql`), so raw SQL
that writes is refused there, and that refusal becomes a
:class:`~asyncbind.exceptions.ReadOnlyBindError` as well (:func:`refusal_listener`).

The listeners go on read-only engines only: writable binds pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext

from .config import BindKey
from .exceptions import ConfigError, ReadOnlyBindError, bind_name
from .urls import is_memory_sqlite

__all__ = [
    "is_refusal",
    "read_only_connections",
    "refusal",
    "refusal_listener",
    "session_sql",
    "session_sql_listener",
    "write_listener",
]

_ARTICLES = {"INSERT": "an", "UPDATE": "an"}
#: MySQL / MariaDB: "Cannot execute statement in a READ ONLY transaction".
_MYSQL_READ_ONLY = 1792
#: PostgreSQL: read_only_sql_transaction.
_POSTGRESQL_READ_ONLY = "25006"
#: SQLite: SQLITE_READONLY, the low byte of its extended codes ("attempt to write a readonly
#: database").
_SQLITE_READ_ONLY = 8
#: What makes a session read-only, where the driver cannot be told so when it connects.
_SESSION_SQL = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}


# -- the connection --------------------------------------------------------------------------


def read_only_connections(
    key: BindKey,
    url: sa.URL,
    connect_args: dict[str, Any],
    replica: int = 0,
    tenant: str | None = None,
) -> sa.URL:
    """The URL of read-only bind ``key`` (or of its read replica number ``replica``, if not 0, or
    of its ``tenant``, for a tenant group), and its ``connect_args`` updated in place, so that its
    connections are read-only from the start where the driver allows it.

    SQLite opens the file read-only (``mode=ro``; an in-memory database cannot be read-only, as
    it starts empty). asyncpg sets ``default_transaction_read_only`` in the server settings.
    Other drivers get :func:`session_sql` on each new connection.
    """
    subject = bind_name(key, start=True, replica=replica, tenant=tenant)
    if url.get_backend_name() == "sqlite":
        if is_memory_sqlite(url):
            if replica:
                fix = "Point the replica at a copy of the bind's database file."
            else:
                fix = "Point the bind at a database file, or drop 'read_only'."
            raise ConfigError(
                f"{subject}: an in-memory SQLite database cannot be read-only (it starts "
                f"empty). {fix}"
            )
        database = url.database or ""
        if not database.startswith("file:"):
            database = f"file:{database}"
        return url.set(database=database).update_query_dict({"mode": "ro", "uri": "true"})
    if url.get_driver_name() == "asyncpg":
        settings = connect_args.get("server_settings") or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(
                f"{subject}: connect_args['server_settings'] is "
                f"{type(settings).__name__}; asyncpg expects a dict of server settings."
            )
        connect_args["server_settings"] = {**settings, "default_transaction_read_only": "on"}
    return url


def session_sql(url: sa.URL) -> str | None:
    """The SQL that makes a new connection to ``url`` read-only, where
    :func:`read_only_connections` could not (None there)."""
    if url.get_driver_name() == "asyncpg":
        return None
    return _SESSION_SQL.get(url.get_backend_name())


def session_sql_listener(sql: str) -> Callable[[Any, Any], None]:
    """A pool ``connect`` listener that runs ``sql`` (:func:`session_sql`) on each new
    connection, and commits it."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()
        dbapi_connection.commit()

    return on_connect


# -- writes ------------------------------------------------------------------------------------


def refusal(
    key: BindKey,
    clause: Any,
    owner: str | None = None,
    replica: int = 0,
    tenant: str | None = None,
) -> ReadOnlyBindError | None:
    """The error that refuses ``clause`` on read-only bind ``key`` (or on its read replica number
    ``replica``, or its ``tenant``), or None when it does not write.

    Writes are DML (INSERT, UPDATE, DELETE, ORM-enabled or not) and DDL. ``owner`` names what the
    statement touches (``"model 'User'"``); by default its table.
    """
    if isinstance(clause, sa.schema.ExecutableDDLElement):
        what = f"DDL on {owner or _ddl_target(clause)}"
        return ReadOnlyBindError(key, what, replica=replica, tenant=tenant)
    if getattr(clause, "is_dml", False):
        verb = type(clause).__name__.upper()
        what = f"{_ARTICLES.get(verb, 'a')} {verb} statement on {owner or _dml_target(clause)}"
        return ReadOnlyBindError(key, what, replica=replica, tenant=tenant)
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


def write_listener(
    key: BindKey, replica: int = 0, tenant: str | None = None
) -> Callable[..., None]:
    """A ``before_execute`` listener for read-only bind ``key``'s engine (or its read replica
    number ``replica``'s, or its ``tenant``'s) that refuses writes before they are sent."""

    def before_execute(
        _conn: sa.Connection, clause: Any, _multiparams: Any, _params: Any, _options: Any
    ) -> None:
        error = refusal(key, clause, replica=replica, tenant=tenant)
        if error is not None:
            raise error

    return before_execute


def refusal_listener(
    key: BindKey, backend: str, replica: int = 0, tenant: str | None = None
) -> Callable[[ExceptionContext], BaseException | None]:
    """A ``handle_error`` listener for read-only bind ``key``'s engine (of ``backend``; or its
    read replica number ``replica``'s, or its ``tenant``'s) that turns the database's refusal
    of a write that could not be recognised into :class:`ReadOnlyBindError`."""

    def handle_error(ctx: ExceptionContext) -> BaseException | None:
        original = ctx.original_exception
        if ctx.is_disconnect or not is_refusal(backend, original):
            return None
        what = f"a write ({_message(original)})"
        return ReadOnlyBindError(key, what, sent=True, replica=replica, tenant=tenant)

    return handle_error
