"""How a bind opens a connection: within ``connect_timeout``, not cut short mid-handshake, and
with a failure that names the bind and the cause, never the password.

:func:`connector` makes the function each engine opens its driver connections with (see
:func:`asyncbind.internals.add_connector`). It receives what the driver's ``connect()`` would
(host, user, password, database from the URL, and ``connect_args``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from . import cancellation, causes, closing, internals
from .config import BindKey
from .exceptions import BindUnavailableError

__all__ = ["connector", "mentions"]

#: Each driver's connect function, imported when a bind first needs it.
_OPENERS: dict[str, Callable[[], Callable[..., Any]]] = {
    "aiomysql": internals.aiomysql_connect,
    "asyncpg": lambda: __import__("asyncpg").connect,
    "asyncmy": lambda: __import__("asyncmy").connect,
    "psycopg": lambda: __import__("psycopg").AsyncConnection.connect,
}


def connector(driver: str, key: BindKey, timeout: float | None) -> Callable[..., Any] | None:
    """A connect function for ``driver``: it connects within ``timeout`` (handshake included), is
    not cut short mid-handshake when its caller is cancelled (:mod:`asyncbind.cancellation`),
    and turns a failure to connect into the error that names ``key`` and the cause
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

    async def attempt(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(timeout):
            return await open_connection(*args, **kwargs)

    async def connect(*args: Any, **kwargs: Any) -> Any:
        try:
            if drop is None:
                return await attempt(*args, **kwargs)
            # Not cut short mid-handshake by the caller's cancellation (asyncbind.cancellation).
            return await cancellation.finish_if_cancelled(attempt(*args, **kwargs), drop)
        except Exception as exc:
            password = kwargs.get("password")
            diagnosis = causes.diagnose(exc)
            # asyncpg and psycopg name the database "database", aiomysql and asyncmy "db".
            who = {"user": kwargs.get("user"), "database": kwargs.get("database", kwargs.get("db"))}
            if not (password and mentions(exc, str(password))):
                if isinstance(exc, TimeoutError) and timeout is not None:
                    reason = TimeoutError(f"no connection within connect_timeout={timeout:g}s")
                    raise BindUnavailableError(key, reason) from exc
                if isinstance(exc, OSError) or diagnosis is not None:
                    # Refused, unreachable, reset; a login refused, a missing database.
                    raise causes.connect_error(key, exc, diagnosis, **who) from exc
                raise
            # Some driver errors quote the password (aiomysql's UnicodeEncodeError does): keep
            # the type and the cause, drop the text (and the names, which may hold the password
            # too), and raise outside this block so that not even __context__ leads back to it.
            hidden = ConnectionError(f"{type(exc).__name__} while connecting (details hidden)")
        raise causes.connect_error(key, hidden, diagnosis, user=None, database=None) from None

    return connect


def mentions(exc: BaseException, secret: str) -> bool:
    """Whether ``exc`` or anything in its chain repeats ``secret``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if secret in str(current) or secret in repr(current) or secret in repr(current.args):
            return True
        current = current.__cause__ or current.__context__
    return False
