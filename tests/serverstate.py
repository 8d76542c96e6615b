"""What the servers say about a test's database: open transactions and connections, and whether a
SQLite file is write-locked.

Asked on the server's admin database over a fresh raw-driver connection, so that the question does
not count itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from conftest import mysql_admin, postgresql_admin

#: A generous bound on waiting for the server to notice a connection's end.
GUARD = 30.0


async def server_fetch(backend: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` run on ``backend``'s admin database over a fresh raw-driver connection."""
    if backend == "postgresql":
        conn = await postgresql_admin()
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()
    conn = await mysql_admin()
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql, args)
            return [tuple(r) for r in await cursor.fetchall()]
    finally:
        conn.close()


async def open_transactions(backend: str, database: str) -> list[tuple[Any, ...]]:
    """The server's connections to ``database`` idle inside a transaction.

    PostgreSQL: ``pg_stat_activity`` state 'idle in transaction'. MariaDB: a transaction in
    INNODB_TRX whose connection is asleep (not running a statement), or a connection whose
    session says it is in a transaction. MariaDB fills INNODB_TRX from a cache refreshed at most
    every 0.1s, so a transaction that just ended can still be listed: a real one is one that stays.
    """
    found = await _open_transactions(backend, database)
    for _ in range(25):
        if not found:
            break
        await asyncio.sleep(0.2)
        found = await _open_transactions(backend, database)
    return found


async def _open_transactions(backend: str, database: str) -> list[tuple[Any, ...]]:
    if backend == "postgresql":
        return await server_fetch(
            backend,
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE datname = $1 AND state LIKE 'idle in transaction%'",
            database,
        )
    return await server_fetch(
        backend,
        "SELECT p.ID, p.COMMAND, t.trx_state, t.trx_query FROM information_schema.INNODB_TRX t "
        "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
        "WHERE p.DB = %s AND p.COMMAND = 'Sleep'",
        database,
    )


async def server_connections(backend: str, database: str) -> int:
    """How many connections the server has open to ``database``."""
    if backend == "postgresql":
        rows = await server_fetch(
            backend, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
        )
    else:
        rows = await server_fetch(
            backend, "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = %s", database
        )
    return int(rows[0][0])


async def settled_connections(backend: str, database: str, expected: int) -> int:
    """The server's count of connections to ``database`` once it is ``expected``, or the last
    count seen after :data:`GUARD` seconds.

    A server notices a closed connection a moment after the client closes it, so the count is
    polled rather than read once.
    """
    count = await server_connections(backend, database)
    try:
        async with asyncio.timeout(GUARD):
            while count != expected:
                await asyncio.sleep(0.05)
                count = await server_connections(backend, database)
    except TimeoutError:
        pass
    return count


def database_of(url: str) -> str:
    """The database name in ``url``."""
    return sa.make_url(url).database or ""


def sqlite_write_locked(path: Path) -> bool:
    """Whether another connection is refused a write transaction on the SQLite file at ``path``,
    after a short busy timeout; blocking (run it in a thread where the loop must go on)."""
    probe = sqlite3.connect(path, timeout=0.2)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return False
    except sqlite3.OperationalError:  # database is locked
        return True
    finally:
        probe.close()
