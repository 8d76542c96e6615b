"""One :class:`~sqlalchemy.ext.asyncio.AsyncEngine` per bind, with per-dialect defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import pool as sa_pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import cancellation, checkin, guards, readonly, registry
from .config import BindConfig
from .exceptions import ConfigError, bind_name
from .urls import is_memory_sqlite

__all__ = ["engine_arguments", "make_engine"]

#: MySQL closes idle connections after ``wait_timeout`` (8 hours by default); recycle well before.
MYSQL_POOL_RECYCLE = 7200
_READ_ONLY_SQL = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}


def _read_only_sqlite(config: BindConfig, url: sa.URL) -> sa.URL:
    if is_memory_sqlite(url):
        raise ConfigError(
            f"{bind_name(config.key, start=True)}: an in-memory SQLite database cannot be "
            "read-only (it starts empty). Point the bind at a database file, or drop 'read_only'."
        )
    database = url.database or ""
    if not database.startswith("file:"):
        database = f"file:{database}"
    return url.set(database=database).update_query_dict({"mode": "ro", "uri": "true"})


def _latin1(password: object) -> bool:
    return password is None or all(ord(c) < 256 for c in str(password))


def engine_arguments(config: BindConfig) -> tuple[sa.URL, dict[str, Any]]:
    """The URL and keyword arguments that ``config``'s engine is created with.

    Dialect defaults come first and the bind's options override them: MySQL and MariaDB get
    ``pool_recycle=7200`` and ``charset=utf8mb4``; in-memory SQLite gets one shared connection
    (``StaticPool``), so that every session of the bind sees the same database. A read-only
    SQLite bind opens its file read-only; PostgreSQL through asyncpg gets read-only transactions
    from the server settings.
    """
    url = config.url
    options: dict[str, Any] = {}
    backend = url.get_backend_name()
    if url.get_driver_name() == "aiomysql" and not _latin1(url.password):
        raise ConfigError(
            f"{bind_name(config.key, start=True)}: its password has characters outside latin-1, "
            "which aiomysql cannot send. Change the password, or use 'mysql+asyncmy://'."
        )
    if backend in ("mysql", "mariadb"):
        options["pool_recycle"] = MYSQL_POOL_RECYCLE
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
    elif is_memory_sqlite(url):
        options["poolclass"] = sa.StaticPool
    options.update(config.engine_options)
    connect_args = dict(options.get("connect_args") or {})
    if config.read_only and backend == "sqlite":
        url = _read_only_sqlite(config, url)
    elif config.read_only and url.get_driver_name() == "asyncpg":
        settings = connect_args.get("server_settings") or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(
                f"{bind_name(config.key, start=True)}: connect_args['server_settings'] is "
                f"{type(settings).__name__}; asyncpg expects a dict of server settings."
            )
        settings = dict(settings)
        settings["default_transaction_read_only"] = "on"
        connect_args["server_settings"] = settings
    if "async_creator_fn" not in connect_args:
        creator = guards.connector(url.get_driver_name(), config.key, config.connect_timeout)
        if creator is not None:
            connect_args["async_creator_fn"] = creator
    if connect_args:
        options["connect_args"] = connect_args
    if "pool" not in options:
        poolclass: type[sa_pool.Pool] | None = options.get("poolclass") or _default_poolclass(url)
        if poolclass is not None and not issubclass(poolclass, sa_pool.NullPool):
            options["poolclass"] = guards.loop_affine_pool(poolclass)
    if cancellation.resets_returned_connections(config.engine_options):
        # asyncbind rolls returned connections back itself (see asyncbind.cancellation).
        options["pool_reset_on_return"] = None
    return url, options


def _default_poolclass(url: sa.URL) -> type[sa_pool.Pool] | None:
    try:
        dialect_cls = url.get_dialect().get_async_dialect_cls(url)
        poolclass: type[sa_pool.Pool] = dialect_cls.get_pool_class(url)  # type: ignore[attr-defined]
        return poolclass
    except Exception:  # an unusual dialect: let create_async_engine choose
        return None


def _read_only_connections(engine: AsyncEngine, sql: str) -> None:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()
        dbapi_connection.commit()

    sa.event.listen(engine.sync_engine, "connect", on_connect)


def make_engine(config: BindConfig) -> AsyncEngine:
    """Create the engine for one bind; no connection is made until it is used."""
    url, options = engine_arguments(config)
    try:
        engine = create_async_engine(url, **options)
    except ImportError as exc:
        raise ConfigError(
            f"{bind_name(config.key, start=True)}: the driver for {url.drivername!r} is not "
            f"installed (no module {exc.name or '?'!r}). Install it with pip, or use a URL with "
            f"no driver ('{url.get_backend_name()}://...') to get the one asyncbind installs."
        ) from None
    except Exception as exc:  # no I/O has happened: whatever was refused is the configuration
        message = (
            f"{bind_name(config.key, start=True)}: its engine options were rejected "
            f"({', '.join(sorted(options)) or 'none'})"
        )
        fix = "Options are create_async_engine() keyword arguments."
        if url.password and guards.mentions(exc, str(url.password)):
            raise ConfigError(f"{message}. {fix}") from None
        raise ConfigError(f"{message}: {exc}. {fix}") from exc
    backend = url.get_backend_name()
    if config.read_only and backend in _READ_ONLY_SQL and url.get_driver_name() != "asyncpg":
        _read_only_connections(engine, _READ_ONLY_SQL[backend])
    if config.read_only:
        readonly.install(engine, config.key)
    guards.install(engine, config)
    checkin.install(engine, config.key)
    registry.register(engine, config)
    return engine
