"""How a bind opens a connection: within ``connect_timeout``, not cut short mid-handshake, and
with a failure that names the bind and the cause, never the password.

:func:`connector` makes the function each engine opens its driver connections with (see
:func:`asyncbind.internals.add_connector`). It receives what the driver's ``connect()`` would
(host, user, password, database from the URL, and ``connect_args``).
:func:`check_connect_args` checks the names in ``connect_args`` against what the driver takes,
before any connection is made.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable, Collection
from typing import Any

from . import cancellation, causes, closing, internals
from .config import BindKey
from .exceptions import BindUnavailableError, ConfigError, bind_name
from .urls import is_password_name, shows_password

__all__ = [
    "DEFAULT_CONNECT_TIMEOUTS",
    "check_connect_args",
    "connect_parameters",
    "connector",
    "mentions",
]

#: Each driver's connect function, imported when a bind first needs it.
_OPENERS: dict[str, Callable[[], Callable[..., Any]]] = {
    "aiomysql": internals.aiomysql_connect,
    "asyncpg": lambda: __import__("asyncpg").connect,
    "asyncmy": lambda: __import__("asyncmy").connect,
    "psycopg": lambda: __import__("psycopg").AsyncConnection.connect,
}

#: The functions whose keyword parameters are the connect arguments each driver takes (aiomysql's
#: connections are made with aiomysql.Connection, see internals.aiomysql_connect). psycopg's
#: connect() takes any libpq parameter, so its connect arguments are not checked.
_CONNECT_FUNCTIONS: dict[str, Callable[[], Callable[..., Any]]] = {
    "asyncpg": lambda: __import__("asyncpg").connect,
    "aiomysql": lambda: __import__("aiomysql").Connection,
    "asyncmy": lambda: __import__("asyncmy").connect,
}
#: sqlite3.connect()'s parameters, to which aiosqlite passes the connect arguments (a builtin's
#: signature cannot be read on every Python), and aiosqlite.connect()'s own.
_AIOSQLITE_PARAMETERS = frozenset(
    {
        "database",
        "timeout",
        "detect_types",
        "isolation_level",
        "check_same_thread",
        "factory",
        "cached_statements",
        "uri",
        "iter_chunk_size",
        "loop",
    }
)
if sys.version_info >= (3, 12):
    _AIOSQLITE_PARAMETERS |= {"autocommit"}
#: What SQLAlchemy's adapter of each driver takes itself, before it calls the driver.
_ADAPTER_PARAMETERS = {
    "asyncpg": {"prepared_statement_cache_size", "prepared_statement_name_func"},
}
#: Seconds a new connection may take, handshake included, on a bind that sets no
#: ``connect_timeout``, for the drivers that would otherwise wait for ever for a server that
#: accepts the connection and never answers: PyMySQL's default. aiomysql has none, and asyncmy's
#: bounds the TCP connection only. (asyncpg bounds its connect itself, to 60 s.)
DEFAULT_CONNECT_TIMEOUTS = {"aiomysql": 10.0, "asyncmy": 10.0}
#: The port each driver connects to when the URL names none.
_DEFAULT_PORTS = {"aiomysql": 3306, "asyncmy": 3306, "asyncpg": 5432, "psycopg": 5432}


def connect_parameters(driver: str) -> frozenset[str] | None:
    """The names ``connect_args`` may hold for ``driver``; None where they are not known (an
    unknown driver, one not installed, one that takes any name)."""
    if driver == "aiosqlite":
        names: Collection[str] = _AIOSQLITE_PARAMETERS
    elif driver in _CONNECT_FUNCTIONS:
        try:
            parameters = inspect.signature(_CONNECT_FUNCTIONS[driver]()).parameters.values()
        except (ImportError, TypeError, ValueError):
            return None  # not installed (create_async_engine() says so), or no signature
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return None
        names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    else:
        return None
    # Every SQLAlchemy async adapter takes a connect function of the application's own.
    return frozenset({*names, *_ADAPTER_PARAMETERS.get(driver, ()), "async_creator_fn"})


def check_connect_args(
    key: BindKey,
    driver: str,
    connect_args: Collection[str],
    *,
    shared: bool,
    replica: int = 0,
    tenant: str | None = None,
) -> None:
    """Raise a :class:`ConfigError` naming bind ``key`` (or its read replica number ``replica``,
    if not 0, or its ``tenant``) if ``connect_args`` (its names; from the engine options shared
    by every bind if ``shared``) has one that ``driver`` does not take.

    Not checked: a driver whose names are not known, and a bind that connects with a function of
    its own (``async_creator_fn``), which may take anything.
    """
    known = connect_parameters(driver)
    if known is None or "async_creator_fn" in connect_args:
        return
    unknown = [name for name in connect_args if name not in known]
    if not unknown:
        return
    names = ", ".join(repr(name) for name in unknown)
    what = f"connect_args key {names}"
    verb = "is not an argument"
    if len(unknown) > 1:
        what, verb = f"connect_args keys {names}", "are not arguments"
    if shared:
        what += " (in the engine options shared by every bind)"
        fix = (
            "Put driver-specific connect_args in the own options of the binds whose driver takes "
            "them: {'url': ..., 'connect_args': {...}} (with from_config(), "
            "SQLALCHEMY_BINDS[None] for the default bind)."
        )
    elif replica:
        fix = (
            "A replica connects with its bind's connect_args: give its URL the primary's "
            "driver, or fix or remove them in the bind's options."
        )
    else:
        fix = "Fix or remove them in the bind's options."
    subject = bind_name(key, start=True, replica=replica, tenant=tenant)
    raise ConfigError(f"{subject}: {what} {verb} of its driver, {driver!r}. {fix}")


def connector(
    driver: str, key: BindKey, timeout: float | None, replica: int = 0, tenant: str | None = None
) -> Callable[..., Any] | None:
    """A connect function for ``driver``: it connects within ``timeout`` (handshake included; if
    None, within the driver's own ``connect_timeout`` when it is given one, else
    :data:`DEFAULT_CONNECT_TIMEOUTS`), is not cut short mid-handshake when its caller is
    cancelled (:mod:`asyncbind.cancellation`), and turns a failure to connect into the error
    that names ``key`` (and the number of its read replica, if not 0, or its ``tenant``) and the
    cause
    (:mod:`asyncbind.causes`): :class:`BindUnavailableError` or one of its subclasses.

    None for drivers it does not know (and SQLite's, which open local files).
    """
    if driver not in _OPENERS:
        return None
    try:
        open_connection = _OPENERS[driver]()
    except ImportError:
        return None  # create_async_engine() reports the missing driver

    drop = closing.driver_drop(driver)

    async def attempt(limit: float | None, *args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(limit):
            return await open_connection(*args, **kwargs)

    async def connect(*args: Any, **kwargs: Any) -> Any:
        limit, within = _time_limit(driver, timeout, kwargs)
        try:
            if drop is None:
                return await attempt(limit, *args, **kwargs)
            # Not cut short mid-handshake by the caller's cancellation (asyncbind.cancellation).
            return await cancellation.finish_if_cancelled(attempt(limit, *args, **kwargs), drop)
        except Exception as exc:
            passwords = [v for k, v in kwargs.items() if is_password_name(k) and isinstance(v, str)]
            diagnosis = causes.diagnose(exc)
            # asyncpg and psycopg name the database "database", aiomysql and asyncmy "db".
            who = {"user": kwargs.get("user"), "database": kwargs.get("database", kwargs.get("db"))}
            if not any(password and mentions(exc, password) for password in passwords):
                if isinstance(exc, TypeError):  # an argument the driver does not take
                    raise ConfigError(
                        f"{bind_name(key, start=True, replica=replica, tenant=tenant)}: "
                        f"{driver} refused its "
                        f"connect arguments: {exc}. They come from the bind's connect_args and "
                        "its URL's query parameters; fix them there."
                    ) from exc
                address = _address(driver, kwargs)
                if isinstance(exc, TimeoutError) and limit is not None:
                    to = f" to {address}" if address else ""
                    waited = TimeoutError(f"no connection{to} within {within}")
                    raise BindUnavailableError(key, waited, replica=replica, tenant=tenant) from exc
                # What the network said: aiomysql and asyncmy raise their error from it.
                reason = causes.network_reason(exc, address) if address else None
                if isinstance(exc, OSError) or diagnosis is not None or reason is not None:
                    # Refused, unreachable, reset; a login refused, a missing database.
                    raise causes.connect_error(
                        key, exc, diagnosis, **who, replica=replica, reason=reason, tenant=tenant
                    ) from exc
                raise
            # Some driver errors quote the password (aiomysql's UnicodeEncodeError does): keep
            # the type and the cause, drop the text (and the names, which may hold the password
            # too), and raise outside this block so that not even __context__ leads back to it.
            hidden = ConnectionError(f"{type(exc).__name__} while connecting (details hidden)")
        raise causes.connect_error(
            key, hidden, diagnosis, user=None, database=None, replica=replica, tenant=tenant
        ) from None

    return connect


def _time_limit(
    driver: str, timeout: float | None, kwargs: dict[str, Any]
) -> tuple[float | None, str]:
    """How long a connection attempt may take, and how an error past it names that limit: the
    bind's ``connect_timeout``; else the driver's own ``connect_timeout`` if it was given one
    (in ``connect_args`` or the URL), which then bounds the handshake too; else
    :data:`DEFAULT_CONNECT_TIMEOUTS`. None: no limit."""
    if timeout is not None:
        return timeout, f"connect_timeout={timeout:g}s"
    default = DEFAULT_CONNECT_TIMEOUTS.get(driver)
    if default is None:
        return None, ""
    given = kwargs.get("connect_timeout")
    if isinstance(given, int | float) and not isinstance(given, bool) and given > 0:
        return float(given), f"connect_timeout={given:g}s"
    return default, (
        f"{default:g} s, the default connect_timeout of {driver} binds: set the bind's "
        "'connect_timeout' to wait longer"
    )


def _address(driver: str, kwargs: dict[str, Any]) -> str | None:
    """Where the driver was told to connect, ``host:port`` (``[::1]:5432``), or the path of a
    Unix socket; None where it was not told one host (asyncpg takes several, or none to read
    them from the environment)."""
    if isinstance(kwargs.get("unix_socket"), str):  # aiomysql's and asyncmy's
        return str(kwargs["unix_socket"])
    host = kwargs.get("host")
    if not isinstance(host, str) or not host:
        return None
    if host.startswith("/"):  # PostgreSQL's socket folder
        return host
    port = kwargs.get("port") or _DEFAULT_PORTS.get(driver)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def mentions(exc: BaseException, secret: str) -> bool:
    """Whether ``exc`` or anything in its chain shows ``secret``, the password, where
    :func:`asyncbind.urls.hide_passwords` would mask it: a one-character password is not
    "mentioned" by every error that has a digit in it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts = (str(current), repr(current), repr(current.args))
        if any(shows_password(text, secret) for text in texts):
            return True
        current = current.__cause__ or current.__context__
    return False
