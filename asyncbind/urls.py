"""Database URLs: parsing, normalisation to an async driver, and safe rendering.

This is the one place where a URL becomes text, and it always hides the password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Iterable

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from .exceptions import ConfigError, bind_name

__all__ = [
    "ASYNC_DRIVERS",
    "hide_passwords",
    "hide_url_passwords",
    "is_memory_sqlite",
    "normalize_url",
    "render_url",
    "sqlite_file_under",
]

#: The async driver a URL gets when it names a backend but no driver.
ASYNC_DRIVERS: dict[str, str] = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
    "sqlite": "sqlite+aiosqlite",
}


def render_url(url: sa.URL) -> str:
    """Render ``url`` as text with its password hidden."""
    return url.render_as_string(hide_password=True)


def hide_passwords(text: str, urls: Iterable[sa.URL]) -> str:
    """``text`` (an error message, a traceback) with the password of each of ``urls`` masked
    wherever a driver may have repeated it."""
    for url in urls:
        if url.password:
            text = text.replace(str(url.password), "***")
    return text


#: A URL's password written out in text: ``scheme://user:PASSWORD@``.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@'\"]+(@)")


def hide_url_passwords(text: str) -> str:
    """``text`` with the password of every URL written in it (``scheme://user:password@host``)
    masked: for text that may hold URLs asyncbind was never given, such as the source lines of a
    traceback through the app's own module."""
    return _URL_PASSWORD.sub(r"\1***\2", text)


def _parse(value: object, key: Hashable | None) -> sa.URL:
    if isinstance(value, sa.URL):
        return value
    if not isinstance(value, str):
        raise ConfigError(
            f"{bind_name(key, start=True)}: the URL must be a string or a sqlalchemy.URL, "
            f"not {type(value).__name__}. Example: 'postgresql://user@host/dbname'."
        )
    if not value.strip():
        raise ConfigError(
            f"{bind_name(key, start=True)}: the URL is empty. "
            "Give a database URL such as 'sqlite:///app.db' or 'postgresql://user@host/dbname'."
        )
    try:
        return sa.make_url(value)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # The driver's message repeats the raw string, password and all: never chain it.
        raise ConfigError(
            f"{bind_name(key, start=True)}: the URL could not be parsed. Expected "
            "'dialect[+driver]://user:password@host[:port]/database'; "
            "percent-encode special characters in the user name and password."
        ) from None


def normalize_url(value: object, key: Hashable | None) -> sa.URL:
    """Parse ``value`` and make sure it names an async driver.

    A URL with no driver gets the default async one (see :data:`ASYNC_DRIVERS`). A URL that names
    a driver keeps it when SQLAlchemy knows an async dialect for it; a sync-only driver or an
    unknown backend raises :class:`ConfigError` naming the bind and the URL to use instead.
    """
    url = _parse(value, key)
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigError(
            f"{bind_name(key, start=True)}: port {url.port} in {render_url(url)!r} is not a TCP "
            "port; expected 1 to 65535 (PostgreSQL listens on 5432, MySQL and MariaDB on 3306)."
        )
    backend, _, driver = url.drivername.partition("+")
    if not driver:
        if backend not in ASYNC_DRIVERS:
            raise ConfigError(
                f"{bind_name(key, start=True)}: scheme {backend!r} in {render_url(url)!r} names no "
                f"async driver. Use {', '.join(f'{s}://' for s in ASYNC_DRIVERS)} (asyncbind "
                "picks the async driver), or name one as 'dialect+driver://' "
                "(for example 'mssql+aioodbc://...')."
            )
        return url.set(drivername=ASYNC_DRIVERS[backend])
    if backend == "postgres":
        url = url.set(drivername=f"postgresql+{driver}")
    try:
        dialect_cls = url.get_dialect()
        is_async = dialect_cls.get_async_dialect_cls(url).is_async
    except sa_exc.NoSuchModuleError:
        raise ConfigError(
            f"{bind_name(key, start=True)}: SQLAlchemy has no dialect {url.drivername!r} "
            f"(in {render_url(url)!r}). Check the spelling of the scheme and driver."
        ) from None
    if not is_async:
        suggestion = ASYNC_DRIVERS.get(backend)
        fix = (
            f"Use {render_url(url.set(drivername=suggestion))!r} instead."
            if suggestion
            else "Name an async driver for this database instead."
        )
        raise ConfigError(
            f"{bind_name(key, start=True)}: driver {driver!r} in {render_url(url)!r} is not async; "
            "asyncbind needs an async driver (asyncpg, psycopg, aiomysql, asyncmy, aiosqlite). "
            + fix
        )
    return url


def is_memory_sqlite(url: sa.URL) -> bool:
    """Whether ``url`` names an in-memory SQLite database."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    return database.startswith("file:") and (
        url.query.get("mode") == "memory" or "mode=memory" in database
    )


def sqlite_file_under(url: sa.URL, folder: str) -> sa.URL:
    """``url`` with its SQLite file path joined to ``folder`` if the path is relative.

    Any other URL (another database, in memory, an absolute path) is returned as it is. With
    ``?uri=true`` the path is the part after ``file:``, as SQLite reads it.
    """
    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url):
        return url
    database = url.database or ""
    prefix = ""
    is_uri = str(url.query.get("uri", "")).lower() in ("true", "yes", "on", "y", "t", "1")
    if is_uri and database.startswith("file:"):
        prefix, database = "file:", database[len("file:") :]
    if database in ("", ":memory:") or os.path.isabs(database):
        return url
    return url.set(database=prefix + os.path.join(folder, database))
