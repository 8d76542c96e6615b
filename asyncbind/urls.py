"""Database URLs: parsing, normalisation to an async driver, and safe rendering.

This is the one place where a URL becomes text, always with its password hidden, and where
passwords are masked in other text (see :func:`hide_passwords`). A password may also be given as
a query parameter (``?password=...``, which asyncpg, psycopg, aiomysql and asyncmy read) or in
the ``connect_args`` engine option: it is hidden the same way.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from .exceptions import ConfigError, bind_name

__all__ = [
    "ASYNC_DRIVERS",
    "MIN_BARE_PASSWORD",
    "hide_option_passwords",
    "hide_passwords",
    "hide_url_passwords",
    "is_memory_sqlite",
    "is_password_name",
    "normalize_url",
    "option_passwords",
    "render_url",
    "shows_password",
    "sqlite_file",
    "sqlite_file_under",
    "url_passwords",
]

#: The async driver a URL gets when it names a backend but no driver.
ASYNC_DRIVERS: dict[str, str] = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
    "sqlite": "sqlite+aiosqlite",
}


#: What names a password, in any case: ``password`` (asyncpg, psycopg, aiomysql, asyncmy),
#: ``passwd`` (MySQLdb's and PyMySQL's old name), ``pwd`` (ODBC), ``sslpassword`` (the client
#: key's, asyncpg and libpq), and names holding one of these.
_PASSWORD_NAME = r"[\w.-]*(?:passw(?:or)?d|pwd)[\w.-]*"

#: A known password shorter than this is masked only where the text shows it as a password (see
#: :func:`hide_passwords`).
MIN_BARE_PASSWORD = 8

#: A URL's password written out in text: ``scheme://user:PASSWORD@``.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@'\"]+(@)")
#: A setting named like a password, ``name=value``: in a URL's query (``%3D`` where the setting
#: is itself inside a parameter, as ODBC's ``odbc_connect``), a connection string, keyword
#: arguments. The value is a quoted string, or runs to the next space, ``&`` or quote.
_PASSWORD_SETTING = re.compile(
    rf"""(\b{_PASSWORD_NAME}(?:=|%3D))('[^']*'|"[^"]*"|[^\s&'"]+)""", re.IGNORECASE
)
#: A dict entry or JSON member named like a password, with a string value: ``'password': 'pw'``.
_PASSWORD_ENTRY = re.compile(
    rf"""((['"]){_PASSWORD_NAME}\2\s*:\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""",
    re.IGNORECASE,
)


def is_password_name(name: object) -> bool:
    """Whether ``name`` (a URL's query parameter, a ``connect_args`` key) names a password."""
    return isinstance(name, str) and re.fullmatch(_PASSWORD_NAME, name, re.IGNORECASE) is not None


def render_url(url: sa.URL) -> str:
    """Render ``url`` as text with its passwords hidden: the one in ``user:password@``, and the
    value of every query parameter named like a password (``?password=...``)."""
    return _PASSWORD_SETTING.sub(r"\1***", url.render_as_string(hide_password=True))


def url_passwords(url: sa.URL) -> list[str]:
    """The passwords ``url`` holds: its own, and those of query parameters named like one."""
    found = [str(url.password)] if url.password else []
    for name, value in url.query.items():
        if is_password_name(name):
            found += [value] if isinstance(value, str) else list(value)
    return [password for password in found if password]


def option_passwords(options: Mapping[str, Any]) -> list[str]:
    """The passwords in a bind's engine ``options``: the string values named like a password,
    of the options themselves and of their ``connect_args``."""
    connect_args = options.get("connect_args")
    entries = list(options.items())
    if isinstance(connect_args, Mapping):
        entries += connect_args.items()
    return [value for name, value in entries if is_password_name(name) and isinstance(value, str)]


def hide_option_passwords(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (a bind's engine options) to be shown: every value named like a password,
    of the options and of their ``connect_args``, replaced by ``'***'``."""
    shown = {name: "***" if is_password_name(name) else value for name, value in options.items()}
    connect_args = options.get("connect_args")
    if isinstance(connect_args, Mapping):
        shown["connect_args"] = hide_option_passwords(connect_args)
    return shown


def hide_url_passwords(text: str) -> str:
    """``text`` with every password that its structure shows masked, whoever it belongs to: the
    password of every URL (``scheme://user:password@host``), and the value of every setting named
    like a password (``password=...``, ``?sslpassword=...``, ``'password': '...'``). For text that
    may hold passwords asyncbind was never given, such as the source lines of a traceback through
    the app's own module."""
    text = _URL_PASSWORD.sub(r"\1***\2", text)
    text = _PASSWORD_SETTING.sub(r"\1***", text)
    return _PASSWORD_ENTRY.sub(r"\1'***'", text)


def hide_passwords(text: str, urls: Iterable[sa.URL], passwords: Iterable[str] = ()) -> str:
    """``text`` (an error message, a traceback) with the passwords of ``urls``, and the other
    ``passwords`` given (those of a bind's ``connect_args``), masked wherever a driver may have
    repeated them.

    Masking follows two rules, so that no password shows and ordinary text stays as it was:

    - Where the text shows a password as one, of any length: in every URL, every setting named
      like a password (:func:`hide_url_passwords`), and each known password that stands as a
      quoted string (``'pw'``, ``"pw"``).
    - Anywhere else, a known password of :data:`MIN_BARE_PASSWORD` characters or more, where it
      is not part of a longer word. A shorter one (``1``, ``root``, ``1234``) is also ordinary
      text (a digit of a timing, a port, a user name), and masking it wherever it occurs would
      garble the output (``ok in ***5.2 ms``); it is masked where the text marks it as a
      password.

    A connection error that shows a password by these rules is not shown at all (see
    :mod:`asyncbind.connector`).
    """
    text = hide_url_passwords(text)
    known = {found for url in urls for found in url_passwords(url)}
    known.update(password for password in passwords if password)
    for password in sorted(known, key=len, reverse=True):  # a password may hold a shorter one
        for quote in ("'", '"'):
            text = text.replace(f"{quote}{password}{quote}", f"{quote}***{quote}")
        text = text.replace(repr(password), "'***'")
        if len(password) >= MIN_BARE_PASSWORD:
            text = _as_word(password).sub("***", text)
    return text


def shows_password(text: str, password: str) -> bool:
    """Whether ``text`` shows ``password``: whether :func:`hide_passwords` would change it."""
    return hide_passwords(text, (), [password]) != text


def _as_word(password: str) -> re.Pattern[str]:
    """``password`` where it is not part of a longer word: ``'secret12'`` is found in
    ``secret12@`` but not in ``secret123``."""
    start = r"(?<!\w)" if re.match(r"\w", password) else ""
    end = r"(?!\w)" if re.search(r"\w\Z", password) else ""
    return re.compile(start + re.escape(password) + end)


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
    unknown backend raises :class:`ConfigError` naming the bind and the URL to use instead. A
    password given as ``?password=`` becomes the URL's password.
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
        return _password_from_query(url.set(drivername=ASYNC_DRIVERS[backend]))
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
    return _password_from_query(url)


#: The drivers whose connect function takes a ``password`` query parameter as SQLAlchemy passes
#: the URL's own password: as its ``password`` keyword argument.
_QUERY_PASSWORD_DRIVERS = frozenset({"asyncpg", "psycopg", "aiomysql", "asyncmy"})


def _password_from_query(url: sa.URL) -> sa.URL:
    """``url`` with a ``?password=`` query parameter made its password, which SQLAlchemy's own
    reprs (``repr(engine)``) hide too. The driver receives it as before; like the parameter, it
    wins over a password in ``user:password@``."""
    password = url.query.get("password")
    if not isinstance(password, str) or url.get_driver_name() not in _QUERY_PASSWORD_DRIVERS:
        return url
    return url.set(password=password).difference_update_query(["password"])


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
    if _is_uri(url) and database.startswith("file:"):
        prefix, database = "file:", database[len("file:") :]
    if database in ("", ":memory:") or os.path.isabs(database):
        return url
    return url.set(database=prefix + os.path.join(folder, database))


def sqlite_file(url: sa.URL) -> str | None:
    """The absolute path, with symbolic links resolved, of the SQLite file that ``url`` names;
    None for an in-memory database or another database.

    With ``?uri=true`` the path is the one in the ``file:`` URI, as SQLite reads it
    (``file:data.db?mode=ro``, ``file:///srv/data.db``, percent-escapes decoded). A relative
    path is taken from the working directory, as SQLite opens it.
    """
    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url):
        return None
    path = url.database or ""
    if _is_uri(url) and path.startswith("file:"):
        path = re.split("[?#]", path[len("file:") :], maxsplit=1)[0]
        if path.startswith("//"):  # an authority (empty, or "localhost"), then the path
            path = "/" + path[2:].partition("/")[2]
        path = urllib.parse.unquote(path)
    return os.path.realpath(path)


def _is_uri(url: sa.URL) -> bool:
    """Whether SQLite reads ``url``'s database as a ``file:`` URI (``?uri=true``)."""
    return str(url.query.get("uri", "")).lower() in ("true", "yes", "on", "y", "t", "1")
