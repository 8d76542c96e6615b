"""Helpers for the integration tests: two binds on two real servers, and what to check on them.

The default bind holds ``items`` (on PostgreSQL), the ``"users"`` bind holds ``users`` (on
MariaDB). Each test makes its own databases, models and AsyncBind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import create_async_engine

from asyncbind import AsyncBind


@dataclass
class TwoBinds:
    db: AsyncBind
    Item: Any
    User: Any


def add_models(db: AsyncBind) -> TwoBinds:
    """Define ``Item`` (default bind) and ``User`` (bind ``"users"``) on ``db``."""

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "items"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50), unique=True)

    class User(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "users"
        __bind_key__ = "users"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50), unique=True)

    return TwoBinds(db, Item, User)


async def make_urls(new_database: Callable[[str], Awaitable[str]]) -> tuple[str, str]:
    """A new PostgreSQL database and a new MariaDB database."""
    return await new_database("postgresql"), await new_database("mysql")


async def names(db: AsyncBind) -> tuple[list[str], list[str]]:
    """The item names and the user names in the databases, read on connections of their own."""

    async def read(key: str | None, table: str) -> list[str]:
        async with db.engines[key].connect() as conn:
            result = await conn.execute(sa.text(f"SELECT name FROM {table} ORDER BY name"))
            return [row[0] for row in result]

    return await read(None, "items"), await read("users", "users")


def checked_out(db: AsyncBind) -> dict[str | None, int]:
    """How many connections each bind's pool has handed out and not had back."""
    return {key: engine.sync_engine.pool.checkedout() for key, engine in db.engines.items()}


def checked_in(db: AsyncBind) -> dict[str | None, int]:
    """How many idle connections each bind's pool holds."""
    return {key: engine.sync_engine.pool.checkedin() for key, engine in db.engines.items()}


def all_zero(counts: Mapping[Any, int]) -> bool:
    return all(count == 0 for count in counts.values())


async def server_connections(db: AsyncBind) -> dict[str | None, int]:
    """How many connections each bind's server has open to the bind's database, asked on the
    server's admin database (so that the question does not count itself)."""
    counts: dict[str | None, int] = {}
    for key, engine in db.engines.items():
        url = engine.url
        if url.get_backend_name() == "postgresql":
            admin = url.set(database="postgres")
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
        else:
            admin = url.set(database="mysql")
            query = "SELECT count(*) FROM information_schema.processlist WHERE db = :name"
        probe = create_async_engine(admin, poolclass=sa.NullPool)
        try:
            async with probe.connect() as conn:
                counts[key] = (
                    await conn.execute(sa.text(query), {"name": url.database})
                ).scalar_one()
        finally:
            await probe.dispose()
    return counts


async def wait_for_no_server_connections(db: AsyncBind) -> dict[str | None, int]:
    """Server connection counts once they are all zero, or the last counts after ~10 s.

    A server ends a closed connection's backend a moment after the client hangs up; this waits
    for that instead of asserting on timing.
    """
    counts = await server_connections(db)
    for _ in range(100):
        if all_zero(counts):
            break
        await asyncio.sleep(0.1)
        counts = await server_connections(db)
    return counts


@asynccontextmanager
async def lifespan_of(app: Any) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan as a server does: startup before the block, shutdown after.

    Raises :class:`LifespanError` with the app's message when startup or shutdown fails.
    """
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await to_app.get()

    async def send(message: dict[str, Any]) -> None:
        await from_app.put(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, receive, send))

    async def step(event: str) -> None:
        await to_app.put({"type": f"lifespan.{event}"})
        get = asyncio.create_task(from_app.get())
        await asyncio.wait([get, task], return_when=asyncio.FIRST_COMPLETED)
        if not get.done():
            get.cancel()
            raise LifespanError(f"{event}: the app ended ({task.exception()!r})")
        message = get.result()
        if message["type"] != f"lifespan.{event}.complete":
            raise LifespanError(f"{event}: {message.get('message', message['type'])}")

    try:
        await step("startup")
    except BaseException:
        await asyncio.gather(task, return_exceptions=True)
        raise
    try:
        yield
    finally:
        await step("shutdown")
        await task


class LifespanError(Exception):
    """An app's lifespan startup or shutdown failed."""
