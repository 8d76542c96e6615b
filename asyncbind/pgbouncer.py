"""PgBouncer in transaction pooling mode: no prepared statement outlives its transaction by name.

Behind PgBouncer with ``pool_mode = transaction`` each transaction may run on a different server
connection, so a prepared statement that a driver keeps by name on one server connection is
missing, or another statement's, on the next: "prepared statement "__asyncpg_stmt_1__" does not
exist" or "... already exists". A bind configured with ``"pgbouncer": True`` sets the driver up as
SQLAlchemy's asyncpg documentation describes: asyncpg's statement cache and SQLAlchemy's are off
(``statement_cache_size=0``, ``prepared_statement_cache_size=0``), and every statement asyncpg
still prepares gets a name no other will have (``prepared_statement_name_func``). psycopg never
prepares (``prepare_threshold=None``).
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from .config import BindKey
from .exceptions import ConfigError, bind_name

__all__ = ["pgbouncer_connect_args", "unique_statement_name"]


def unique_statement_name() -> str:
    """A prepared statement name no other connection or statement uses."""
    return f"__asyncbind_{uuid.uuid4().hex}__"


def pgbouncer_connect_args(key: BindKey, url: sa.URL, connect_args: dict[str, Any]) -> None:
    """Update ``connect_args`` in place so that bind ``key``'s driver works through PgBouncer in
    transaction pooling mode. A bind's own setting of any of them is kept."""
    driver = url.get_driver_name()
    if driver == "asyncpg":
        connect_args.setdefault("statement_cache_size", 0)
        connect_args.setdefault("prepared_statement_cache_size", 0)
        connect_args.setdefault("prepared_statement_name_func", unique_statement_name)
    elif driver == "psycopg":
        connect_args.setdefault("prepare_threshold", None)
    else:
        raise ConfigError(
            f"{bind_name(key, start=True)}: option 'pgbouncer' is for PostgreSQL through asyncpg "
            f"or psycopg, not {url.drivername!r}. Drop 'pgbouncer', or point the bind at "
            "PgBouncer with a 'postgresql://' URL."
        )
