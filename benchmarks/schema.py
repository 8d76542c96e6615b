"""schema: ``create_all`` / ``drop_all`` of 20 tables on each of 3 binds (PostgreSQL, MariaDB,
SQLite).

asyncbind runs the binds concurrently; plain SQLAlchemy runs them bind after bind (and, for
reference, concurrently with ``asyncio.gather``).

The raw drivers (asyncpg, aiomysql, aiosqlite) also send the same DDL, compiled beforehand, alone
and on the three binds at once: the floor, with no Python library work in the way, and how much
the servers slow each other down when they share the machine. Target: asyncbind's ``create_all``
and ``drop_all`` <= 1.2x the time of the raw drivers on the three binds at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from asyncbind import AsyncBind

from .harness import Table
from .servers import (
    DRIVERS,
    MYSQL,
    NAMES,
    POSTGRESQL,
    SQLITE,
    databases,
    driver_arguments,
    unreachable,
    with_driver,
)

TABLES = 20


def define_tables(make: Callable[..., sa.Table], prefix: str) -> None:
    """``TABLES`` tables, each with a foreign key to the one before and an index."""
    for i in range(TABLES):
        columns: list[Any] = [
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(100), nullable=False, index=True),
            sa.Column("amount", sa.Numeric(12, 2)),
            sa.Column("created", sa.DateTime, server_default=sa.func.now()),
            sa.Column("body", sa.Text),
        ]
        if i:
            columns.append(sa.Column("parent_id", sa.ForeignKey(f"{prefix}_{i - 1}.id")))
        make(f"{prefix}_{i}", *columns)


def ddl(metadata: sa.MetaData, dialect: sa.Dialect, verb: str = "create_all") -> list[str]:
    """The statements ``verb`` (``create_all`` or ``drop_all``) sends for ``metadata``, compiled
    for ``dialect`` (collected by SQLAlchemy's mock engine, so DDL events are included)."""
    statements: list[str] = []

    def collect(construct: Any, *_multiparams: Any, **_params: Any) -> None:
        statements.append(str(construct.compile(dialect=dialect)))

    run = getattr(metadata, verb)
    run(sa.create_mock_engine(f"{dialect.name}://", collect), checkfirst=False)
    return statements


class RawDDL:
    """One raw driver connection per bind, sending precompiled DDL statement by statement in a
    transaction (MariaDB commits each DDL statement by itself)."""

    def __init__(
        self, urls: dict[str, sa.URL], statements: dict[str, dict[str, list[str]]]
    ) -> None:
        """``statements[verb][backend]``: what to send for ``create_all`` and ``drop_all``."""
        self.urls, self.statements = urls, statements
        self.conns: dict[str, Any] = {}

    async def open(self) -> None:
        import aiomysql
        import aiosqlite
        import asyncpg

        for backend, url in self.urls.items():
            if backend == POSTGRESQL:
                self.conns[backend] = await asyncpg.connect(**driver_arguments(backend, url))
            elif backend == MYSQL:
                self.conns[backend] = await aiomysql.connect(
                    **driver_arguments(backend, url), autocommit=True
                )
            else:
                self.conns[backend] = await aiosqlite.connect(url.database or ":memory:")

    async def run(self, verb: str, backend: str) -> None:
        conn, statements = self.conns[backend], self.statements[verb][backend]
        if backend == POSTGRESQL:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
        elif backend == MYSQL:
            async with conn.cursor() as cursor:
                for statement in statements:
                    await cursor.execute(statement)
        else:
            for statement in statements:
                await conn.execute(statement)
            await conn.commit()

    async def close(self) -> None:
        for backend, conn in self.conns.items():
            if backend == MYSQL:
                conn.close()
            else:
                await conn.close()


async def main(options: Any) -> None:
    repeat = options.repeat or (2 if options.quick else 7)
    backends = [b for b in (POSTGRESQL, MYSQL, SQLITE) if not await unreachable(b)]
    if len(backends) < 3:
        missing = [NAMES[b] for b in (POSTGRESQL, MYSQL, SQLITE) if b not in backends]
        print(f"\nschema: skipped ({', '.join(missing)} not reachable)")
        return
    async with databases("schema", *backends) as urls:
        keys = {POSTGRESQL: "pg", MYSQL: "my", SQLITE: "lite"}
        db = AsyncBind(binds={keys[b]: urls[b] for b in backends})
        for backend in backends:
            key = keys[backend]
            define_tables(lambda name, *cols, key=key: db.Table(name, *cols, bind_key=key), "t")
        engines: dict[str, AsyncEngine] = {}
        metadatas: dict[str, sa.MetaData] = {}
        for backend in backends:
            engines[backend] = create_async_engine(with_driver(urls[backend], DRIVERS[backend]))
            metadata = metadatas[backend] = sa.MetaData()
            define_tables(lambda name, *cols, m=metadata: sa.Table(name, m, *cols), "t")
        raw = RawDDL(
            urls,
            {
                verb: {b: ddl(metadatas[b], engines[b].sync_engine.dialect, verb) for b in backends}
                for verb in ("create_all", "drop_all")
            },
        )

        async def plain_create(backend: str) -> None:
            async with engines[backend].begin() as conn:
                await conn.run_sync(metadatas[backend].create_all)

        async def plain_drop(backend: str) -> None:
            async with engines[backend].begin() as conn:
                await conn.run_sync(metadatas[backend].drop_all)

        async def drop_everywhere() -> None:
            await asyncio.gather(*(plain_drop(b) for b in backends))

        async def create_everywhere() -> None:
            await asyncio.gather(*(plain_create(b) for b in backends))

        def timed(
            prepare: Callable[[], Awaitable[None]], work: Callable[[], Awaitable[None]], doc: str
        ) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                await prepare()
                started = time.perf_counter()
                await work()
                return time.perf_counter() - started

            run.__doc__ = doc
            return run

        def add_alone(
            table: Table,
            prefix: str,
            one: Callable[[str], Awaitable[None]],
            doc: Callable[[str], str],
            slowest_doc: str,
            prepare: Callable[[], Awaitable[None]],
        ) -> None:
            """A case per bind run alone, named ``{prefix}{name} alone``, and their slowest."""
            names = []
            for backend in backends:
                names.append(f"{prefix}{NAMES[backend]} alone")
                table.case(names[-1], timed(prepare, lambda b=backend: one(b), doc(backend)))
            table.slowest_of(f"{prefix}slowest alone", slowest_doc, names)

        async def sequential_create() -> None:
            for b in backends:
                await plain_create(b)

        async def sequential_drop() -> None:
            for b in backends:
                await plain_drop(b)

        try:
            await raw.open()
            for verb, prepare, op, sequential, together, ours in (
                (
                    "create_all",
                    drop_everywhere,
                    plain_create,
                    sequential_create,
                    create_everywhere,
                    db.create_all,
                ),
                (
                    "drop_all",
                    create_everywhere,
                    plain_drop,
                    sequential_drop,
                    drop_everywhere,
                    db.drop_all,
                ),
            ):
                table = Table(
                    f"schema: {verb} of {TABLES} tables on each of {len(backends)} binds, "
                    f"{repeat} runs",
                    repeat=repeat,
                    warmup=not options.quick,
                )
                add_alone(
                    table,
                    "",
                    lambda b, op=op: op(b),
                    lambda b: f"plain SQLAlchemy, {NAMES[b]} bind alone",
                    "the slowest single bind alone (per run)",
                    prepare,
                )
                table.case(
                    "bind after bind",
                    timed(prepare, sequential, "plain SQLAlchemy, bind after bind"),
                )
                table.case(
                    "gather",
                    timed(prepare, together, "plain SQLAlchemy, 3 binds with asyncio.gather"),
                    vs=["slowest alone", "bind after bind"],
                    ratio="time",
                )
                table.case(
                    "asyncbind",
                    timed(prepare, ours, f"asyncbind db.{verb}(), binds concurrently"),
                    vs=["raw together", "slowest alone", "bind after bind"],
                    ratio="time",
                )
                add_alone(
                    table,
                    "raw ",
                    lambda b, verb=verb: raw.run(verb, b),
                    lambda b: f"raw {DRIVERS[b]}, precompiled DDL, alone",
                    "raw: the slowest single bind alone",
                    prepare,
                )

                async def raw_together(verb: str = verb) -> None:
                    await asyncio.gather(*(raw.run(verb, b) for b in backends))

                table.case(
                    "raw together",
                    timed(prepare, raw_together, "raw drivers, 3 binds with asyncio.gather"),
                    vs=["raw slowest alone"],
                    ratio="time",
                )
                await table.run()
        finally:
            await drop_everywhere()
            await raw.close()
            await db.dispose()
            for engine in engines.values():
                await engine.dispose()
