"""Helpers for the runtime-bind and tenant tests: what a database holds and who is connected to it,
asked on connections of their own (never through the AsyncBind under test)."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from asyncbind.urls import normalize_url


async def read_rows(url: str | sa.URL, query: str) -> list[tuple[Any, ...]]:
    """The rows of ``query`` in the database at ``url``, read on a connection of its own; an empty
    list when the table is not there."""
    probe = create_async_engine(normalize_url(url, None), poolclass=sa.NullPool)
    try:
        async with probe.connect() as conn:
            return [tuple(row) for row in await conn.execute(sa.text(query))]
    finally:
        await probe.dispose()


async def table_names(url: str | sa.URL) -> set[str]:
    """The tables of the database at ``url``."""
    probe = create_async_engine(normalize_url(url, None), poolclass=sa.NullPool)
    try:
        async with probe.connect() as conn:
            return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    finally:
        await probe.dispose()


async def server_connections(url: str | sa.URL) -> int:
    """How many connections the server has open to the database at ``url`` (0 for SQLite), asked
    on the server's admin database so that the question does not count itself."""
    parsed = normalize_url(url, None)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return 0
    if backend == "postgresql":
        admin = parsed.set(database="postgres")
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
    else:
        admin = parsed.set(database="mysql")
        query = "SELECT count(*) FROM information_schema.processlist WHERE db = :name"
    probe = create_async_engine(admin, poolclass=sa.NullPool)
    try:
        async with probe.connect() as conn:
            count = (await conn.execute(sa.text(query), {"name": parsed.database})).scalar_one()
            return int(count)
    finally:
        await probe.dispose()


async def no_server_connections(url: str | sa.URL) -> int:
    """The server's connection count for ``url`` once it is 0, or the last count after ~10 s (a
    server ends a closed connection's backend a moment after the client hangs up)."""
    count = await server_connections(url)
    for _ in range(100):
        if count == 0:
            break
        await asyncio.sleep(0.1)
        count = await server_connections(url)
    return count


class OpenConnections:
    """Counts the connections an engine opens and closes (pool ``connect`` and ``close`` events),
    on any backend."""

    def __init__(self, engine: Any) -> None:
        self.opened = 0
        self.closed = 0
        sa.event.listen(engine.sync_engine, "connect", self._connect)
        sa.event.listen(engine.sync_engine, "close", self._close)
        sa.event.listen(engine.sync_engine, "close_detached", self._close)

    def _connect(self, *_: Any) -> None:
        self.opened += 1

    def _close(self, *_: Any) -> None:
        self.closed += 1

    @property
    def open(self) -> int:
        return self.opened - self.closed
