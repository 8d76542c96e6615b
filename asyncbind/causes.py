"""What a driver's error means, and the asyncbind error that says so, naming the bind.

The server says why it refused or ended something with a code: PostgreSQL with a SQLSTATE (the
``sqlstate`` of asyncpg's and psycopg's errors, and of SQLAlchemy's wrappers around them), MySQL
and MariaDB with an error number (the first of the ``args`` of PyMySQL-style errors, which
aiomysql and asyncmy raise); SQLite with a result code name (``sqlite_errorname``). The code is
looked for along the error's chain, since drivers and SQLAlchemy wrap each other's errors.

- A login refused, or a missing database, while connecting: :class:`BindAuthenticationError`,
  :class:`DatabaseNotFoundError`; any other failure to connect: :class:`BindUnavailableError`,
  which says in words what the network said (:func:`network_reason`): the connection refused,
  the host name not resolved, the attempt timed out.
- An established connection ended from the other end (the server said so, or the driver found it
  closed or reset): :class:`ConnectionEndedError`, with the server's words when it sent any.
- A deadlock or serialization failure: :class:`DeadlockError`.

:func:`error_listener` is the ``handle_error`` listener that puts these errors in place of the
driver's, on each engine.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext

from .config import BindKey
from .exceptions import (
    BindAuthenticationError,
    BindUnavailableError,
    ConnectionEndedError,
    DatabaseNotFoundError,
    DeadlockError,
)

__all__ = [
    "Cause",
    "Diagnosis",
    "connect_error",
    "diagnose",
    "error_listener",
    "network_reason",
    "statement_error",
]


class Cause(enum.Enum):
    AUTHENTICATION = "authentication"
    NO_DATABASE = "no database"
    ENDED = "ended by the server"
    DEADLOCK = "deadlock"
    SERIALIZATION = "serialization failure"


#: PostgreSQL SQLSTATEs (Appendix A of its manual).
_SQLSTATES = {
    "28000": Cause.AUTHENTICATION,  # invalid_authorization_specification: no such role, pg_hba
    "28P01": Cause.AUTHENTICATION,  # invalid_password
    "3D000": Cause.NO_DATABASE,  # invalid_catalog_name
    "40P01": Cause.DEADLOCK,  # deadlock_detected
    "40001": Cause.SERIALIZATION,  # serialization_failure
    "57P01": Cause.ENDED,  # admin_shutdown: pg_terminate_backend(), a fast shutdown
    "57P02": Cause.ENDED,  # crash_shutdown
    "57P05": Cause.ENDED,  # idle_session_timeout
    "25P03": Cause.ENDED,  # idle_in_transaction_session_timeout
}

#: MySQL and MariaDB error numbers.
_MYSQL_ERRORS = {
    1044: Cause.AUTHENTICATION,  # ER_DBACCESS_DENIED_ERROR: the user may not use the database
    1045: Cause.AUTHENTICATION,  # ER_ACCESS_DENIED_ERROR
    1698: Cause.AUTHENTICATION,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1049: Cause.NO_DATABASE,  # ER_BAD_DB_ERROR
    1213: Cause.DEADLOCK,  # ER_LOCK_DEADLOCK
    1053: Cause.ENDED,  # ER_SERVER_SHUTDOWN
    1927: Cause.ENDED,  # ER_CONNECTION_KILLED (MariaDB)
    3169: Cause.ENDED,  # ER_SESSION_WAS_KILLED (MySQL)
    4031: Cause.ENDED,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL): wait_timeout
}

#: The packages whose errors carry a MySQL error number as their first argument.
_MYSQL_DRIVERS = ("pymysql", "aiomysql", "asyncmy")


@dataclass(frozen=True)
class Diagnosis:
    """A cause, and the server's own words about it."""

    cause: Cause
    message: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def diagnose(exc: BaseException) -> Diagnosis | None:
    """The cause that ``exc`` (or an error in its chain) reports, if the server gave a known one."""
    for current in _chain(exc):
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate in _SQLSTATES:
            return Diagnosis(_SQLSTATES[sqlstate], str(current.args[0]) if current.args else "")
        if getattr(current, "sqlite_errorname", None) == "SQLITE_CANTOPEN":
            # SQLite makes a missing database file, but not a missing folder (nor a file that
            # is opened read-only).
            return Diagnosis(Cause.NO_DATABASE, str(current))
        args = current.args
        if (
            type(current).__module__.partition(".")[0] in _MYSQL_DRIVERS
            and len(args) >= 2
            and args[0] in _MYSQL_ERRORS
        ):
            return Diagnosis(_MYSQL_ERRORS[args[0]], str(args[1]))
    return None


def network_reason(exc: BaseException, address: str) -> str | None:
    """Why a connection to ``address`` (``host:port``) failed, in words, from the ``OSError``
    in ``exc``'s chain: ``connection to 127.0.0.1:3306 refused; ConnectionRefusedError: ...``.
    None if the chain holds none.

    aiomysql and asyncmy raise ``(2003, "Can't connect to MySQL server on '127.0.0.1'")``
    whatever happened, from the ``OSError`` that says it; asyncpg raises the ``OSError`` itself,
    which names no host when the host name is not resolved.
    """
    for current in _chain(exc):
        if isinstance(current, OSError):
            break
    else:
        return None
    if isinstance(current, ConnectionRefusedError):
        what = f"connection to {address} refused"
    elif isinstance(current, socket.gaierror):
        what = f"host name of {address} not resolved"
    elif isinstance(current, TimeoutError):
        what = f"connection to {address} timed out"
    else:
        what = f"connection to {address} failed"
    return f"{what}; {type(current).__name__}: {current}".rstrip(": ")


def connect_error(
    key: BindKey,
    shown: BaseException,
    diagnosis: Diagnosis | None,
    *,
    user: str | None,
    database: str | None,
    replica: int = 0,
    reason: str | None = None,
    tenant: str | None = None,
) -> BindUnavailableError:
    """The error for a failure to connect to bind ``key`` (to its read replica number
    ``replica``, if not 0, or to its ``tenant``, for a tenant group); ``shown`` is the driver's
    error (or a stand-in that hides it), ``diagnosis`` what the driver's error says and
    ``reason`` what the network said, in words (:func:`network_reason`)."""
    cause = diagnosis.cause if diagnosis is not None else None
    if cause is Cause.AUTHENTICATION:
        return BindAuthenticationError(key, shown, user=user, replica=replica, tenant=tenant)
    if cause is Cause.NO_DATABASE:
        return DatabaseNotFoundError(key, shown, database=database, replica=replica, tenant=tenant)
    return BindUnavailableError(key, shown, replica=replica, reason=reason, tenant=tenant)


def statement_error(
    key: BindKey,
    orig: BaseException,
    statement: str | None,
    params: Any,
    *,
    disconnect: bool,
    replica: int = 0,
    tenant: str | None = None,
) -> Exception | None:
    """The error for ``orig``, raised by a connection of bind ``key`` (of its read replica number
    ``replica``, if not 0, or of its ``tenant``) that was established, or None when asyncbind
    has nothing to add. ``disconnect`` says whether the dialect found the connection lost."""
    diagnosis = diagnose(orig)
    cause = diagnosis.cause if diagnosis is not None else None
    if diagnosis is not None and cause in (Cause.DEADLOCK, Cause.SERIALIZATION):
        return DeadlockError(
            key,
            orig,
            statement,
            params,
            server_message=diagnosis.message,
            serialization=cause is Cause.SERIALIZATION,
            replica=replica,
            tenant=tenant,
        )
    if diagnosis is not None and cause is Cause.ENDED:
        return ConnectionEndedError(
            key,
            orig,
            statement,
            server_message=diagnosis.message,
            replica=replica,
            tenant=tenant,
        )
    if isinstance(orig, TimeoutError):  # the network went quiet: nothing was ended
        return BindUnavailableError(key, orig, statement, replica=replica, tenant=tenant)
    if disconnect or isinstance(orig, OSError):
        return ConnectionEndedError(key, orig, statement, replica=replica, tenant=tenant)
    return None


def error_listener(
    key: BindKey, url: sa.URL, replica: int = 0, tenant: str | None = None
) -> Callable[[ExceptionContext], BaseException | None]:
    """A ``handle_error`` listener for the engine of bind ``key`` (of its read replica number
    ``replica``, if not 0, or of its ``tenant``; at ``url``): the driver's error becomes the error
    that names the bind (or the replica, or the tenant) and the cause, where there is one to
    name.

    A failed pre-ping is left alone (the pool opens a new connection by itself), and so is a
    cancellation. A failure to connect reaches it from SQLite and from a connect function of the
    application's own; asyncbind's connector reports its own (:mod:`asyncbind.connector`).
    """

    def translate(ctx: ExceptionContext) -> BaseException | None:
        orig = ctx.original_exception
        if ctx.is_pre_ping or not isinstance(orig, Exception):
            return None
        if ctx.connection is None:  # connecting
            diagnosis = diagnose(orig)
            return connect_error(
                key,
                orig,
                diagnosis,
                user=url.username,
                database=url.database,
                replica=replica,
                tenant=tenant,
            )
        error = statement_error(
            key,
            orig,
            ctx.statement,
            ctx.parameters,
            disconnect=ctx.is_disconnect,
            replica=replica,
            tenant=tenant,
        )
        if isinstance(error, BindUnavailableError):
            ctx.is_disconnect = True  # the connection is discarded, not returned to the pool
        return error

    return translate
