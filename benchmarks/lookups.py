"""The lookup workload shared by the routing, peers and scaling suites.

Each database gets a table ``item`` of ``ROWS`` rows. One operation is one "request": open a
session, look one row up by primary key (or with a select), close the session. Operations run in
``tasks`` concurrent tasks over a pool of ``POOL`` connections.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from asyncbind import AsyncBind

from .servers import DRIVERS, MYSQL, POSTGRESQL, SQLITE, driver_arguments, with_driver

ROWS = 1_000
POOL = 16
TASKS = 32
SQL = "SELECT id, name, value FROM item WHERE id = "

Op = Callable[[int], Awaitable[Any]]


def item_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
    ]


async def fill(urls: dict[str, sa.URL]) -> None:
    """Create and fill ``item`` in each database."""
    for url in urls.values():
        engine = create_async_engine(with_driver(url, DRIVERS[url.get_backend_name()]))
        metadata = sa.MetaData()
        table = sa.Table("item", metadata, *item_columns())
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(
                table.insert(), [{"id": i, "name": f"item {i}", "value": i * 7} for i in ids()]
            )
        await engine.dispose()


def ids() -> range:
    return range(1, ROWS + 1)


async def run_concurrently(op: Op, count: int, tasks: int = TASKS) -> None:
    """Run ``op`` ``count`` times over ``tasks`` tasks, keys cycling through the table."""
    keys: Iterator[int] = itertools.islice(itertools.cycle(ids()), count)

    async def worker() -> None:
        for key in keys:
            await op(key)

    await asyncio.gather(*(worker() for _ in range(tasks)))


ENGINE_OPTIONS = {"pool_size": POOL, "max_overflow": 0}


# -- asyncbind --------------------------------------------------------------------------------


#: asyncbind's bind key for each backend's database.
BIND_KEYS = {POSTGRESQL: "pg", MYSQL: "my", SQLITE: "lite"}


class AsyncbindSetup:
    """asyncbind with a bind per database ('pg', 'my', 'lite'), each with its ``item`` model."""

    def __init__(self, urls: dict[str, sa.URL]) -> None:
        binds = {BIND_KEYS[backend]: url for backend, url in urls.items()}
        self.db = db = AsyncBind(binds=binds, engine_options=ENGINE_OPTIONS)
        self.models: dict[str, Any] = {}
        for backend in urls:
            key = BIND_KEYS[backend]
            table = db.Table("item", *item_columns(), bind_key=key)
            namespace = {"__bind_key__": key, "__table__": table}
            self.models[backend] = type(f"{key.title()}Item", (db.Model,), namespace)

    def get(self, backend: str) -> Op:
        model, session = self.models[backend], self.db.session

        async def op(key: int) -> Any:
            async with session() as s:
                return await s.get(model, key)

        return op

    def get_commit(self, backend: str) -> Op:
        """A lookup that commits before the session closes (a request that wrote, say): the
        close finds no transaction."""
        model, session = self.models[backend], self.db.session

        async def op(key: int) -> Any:
            async with session() as s:
                found = await s.get(model, key)
                await s.commit()
                return found

        return op

    def orm_select(self, backend: str) -> Op:
        model, session = self.models[backend], self.db.session

        async def op(key: int) -> Any:
            async with session() as s:
                return (await s.execute(sa.select(model).where(model.id == key))).scalar_one()

        return op

    def core_select(self, backend: str) -> Op:
        table, session = self.models[backend].__table__, self.db.session

        async def op(key: int) -> Any:
            async with session() as s:
                return (await s.execute(sa.select(table).where(table.c.id == key))).one()

        return op

    def mixed(self) -> Op:
        pg, my, session = self.models[POSTGRESQL], self.models[MYSQL], self.db.session

        async def op(key: int) -> Any:
            async with session() as s:
                return await s.get(pg, key), await s.get(my, key)

        return op

    async def dispose(self) -> None:
        await self.db.dispose()


# -- plain SQLAlchemy -------------------------------------------------------------------------


class PlainSetup:
    """Plain SQLAlchemy: one AsyncEngine per database and ``AsyncSession(binds=...)``."""

    def __init__(self, urls: dict[str, sa.URL]) -> None:
        class Base(sa_orm.DeclarativeBase):
            pass

        self.engines: dict[str, AsyncEngine] = {}
        self.models: dict[str, Any] = {}
        for backend, url in urls.items():
            engine = create_async_engine(with_driver(url, DRIVERS[backend]), **ENGINE_OPTIONS)
            table = sa.Table("item", sa.MetaData(), *item_columns())
            model = type(f"Plain{backend.title()}Item", (Base,), {"__table__": table})
            self.engines[backend] = engine
            self.models[backend] = model
        self.sessions = {
            backend: async_sessionmaker(engine, expire_on_commit=False)
            for backend, engine in self.engines.items()
        }
        self.two_binds = async_sessionmaker(
            binds={self.models[b]: e for b, e in self.engines.items()}, expire_on_commit=False
        )

    def get(self, backend: str) -> Op:
        model, session = self.models[backend], self.sessions[backend]

        async def op(key: int) -> Any:
            async with session() as s:
                return await s.get(model, key)

        return op

    def get_commit(self, backend: str) -> Op:
        """A lookup that commits before the session closes (a request that wrote, say): the
        close finds no transaction."""
        model, session = self.models[backend], self.sessions[backend]

        async def op(key: int) -> Any:
            async with session() as s:
                found = await s.get(model, key)
                await s.commit()
                return found

        return op

    def orm_select(self, backend: str) -> Op:
        model, session = self.models[backend], self.sessions[backend]

        async def op(key: int) -> Any:
            async with session() as s:
                return (await s.execute(sa.select(model).where(model.id == key))).scalar_one()

        return op

    def core_select(self, backend: str) -> Op:
        table, session = self.models[backend].__table__, self.sessions[backend]

        async def op(key: int) -> Any:
            async with session() as s:
                return (await s.execute(sa.select(table).where(table.c.id == key))).one()

        return op

    def mixed(self) -> Op:
        pg, my, session = self.models[POSTGRESQL], self.models[MYSQL], self.two_binds

        async def op(key: int) -> Any:
            async with session() as s:
                return await s.get(pg, key), await s.get(my, key)

        return op

    async def dispose(self) -> None:
        for engine in self.engines.values():
            await engine.dispose()


# -- raw drivers ------------------------------------------------------------------------------


class RawSetup:
    """asyncpg and aiomysql pools of ``POOL`` connections, no SQLAlchemy."""

    def __init__(self, urls: dict[str, sa.URL]) -> None:
        self.urls = urls
        self.pools: dict[str, Any] = {}

    async def start(self) -> None:
        import aiomysql
        import asyncpg

        for backend, url in self.urls.items():
            if backend == POSTGRESQL:
                self.pools[backend] = await asyncpg.create_pool(
                    **driver_arguments(backend, url), min_size=POOL, max_size=POOL
                )
            else:
                self.pools[backend] = await aiomysql.create_pool(
                    **driver_arguments(backend, url),
                    minsize=POOL,
                    maxsize=POOL,
                    charset="utf8mb4",
                    autocommit=True,
                )

    def get(self, backend: str) -> Op:
        pool = self.pools[backend]
        if backend == POSTGRESQL:
            sql = SQL + "$1"

            async def pg(key: int) -> Any:
                async with pool.acquire() as conn:
                    return await conn.fetchrow(sql, key)

            return pg
        sql = SQL + "%s"

        async def my(key: int) -> Any:
            async with pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(sql, (key,))
                return await cursor.fetchone()

        return my

    async def dispose(self) -> None:
        for backend, pool in self.pools.items():
            if backend == POSTGRESQL:
                await pool.close()
            else:
                pool.close()
                await pool.wait_closed()
