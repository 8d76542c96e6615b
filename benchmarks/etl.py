"""etl: copy rows from a MariaDB bind (and from a SQLite bind) into a PostgreSQL bind.

First, whole processes, MariaDB -> PostgreSQL, 1,000,000 rows (20,000 with --quick), each case a
process of its own timed from start to exit, into the same existing table:

* pgloader (Debian's ``pgloader`` package), data only, into the existing table; "skipped" when
  it is not installed;
* raw drivers: asyncmy's unbuffered cursor -> asyncpg ``COPY``, one stream;
* asyncbind ``db.copy`` with aiomysql and with asyncmy as the source driver, in one stream and
  in 2 and 4 key ranges at once (``parallel=``).

Target: asyncbind (its fastest way) >= 1.2x pgloader. Then, in one process:

* raw-driver pipeline: aiomysql (or aiosqlite) streaming cursor -> asyncpg ``COPY``, batches of
  10,000 in their own transactions, reading the next batch while the last one is written;
* asyncbind: ``await db.copy(source, target)`` (see ``asyncbind.bulk``);
* naive ORM: ``select(Source)`` into a list of objects, ``session.add_all(...)``, one commit.

Then the peak Python memory of ``db.copy`` at two row counts five times apart, to show that it does
not grow with the row count. Targets: asyncbind >= 0.8x the raw pipeline and >= 5x the naive ORM on
MariaDB -> PostgreSQL, 200,000 rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from asyncbind import AsyncBind
from asyncbind.bulk import BATCH_SIZE
from asyncbind.urls import hide_passwords

from .etlprocess import COLUMNS, etl_columns
from .harness import Table
from .servers import (
    DRIVERS,
    MYSQL,
    NAMES,
    POSTGRESQL,
    SQLITE,
    databases,
    unreachable,
    with_driver,
)

ROOT = Path(__file__).resolve().parent.parent


def fill_sql(backend: str, rows: int) -> str:
    """One statement that fills ``src`` with ``rows`` generated rows on the server."""
    if backend == MYSQL:
        return (
            "INSERT INTO src (id, name, amount, day, at, flag, note) "
            "SELECT seq, CONCAT('name ', seq), seq / 100, "
            "DATE '2020-01-01' + INTERVAL MOD(seq, 1000) DAY, "
            "TIMESTAMP '2020-01-01 00:00:00' + INTERVAL seq SECOND, MOD(seq, 2), "
            "IF(MOD(seq, 5) = 0, NULL, REPEAT('x', MOD(seq, 40))) "
            f"FROM seq_1_to_{rows}"
        )
    return (
        f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {rows}) "
        "INSERT INTO src (id, name, amount, day, at, flag, note) "
        "SELECT n, 'name ' || n, round(n / 100.0, 2), "
        "date('2020-01-01', '+' || (n % 1000) || ' days'), "
        "datetime('2020-01-01', '+' || n || ' seconds'), n % 2, "
        "CASE WHEN n % 5 = 0 THEN NULL ELSE substr('" + "x" * 40 + "', 1, n % 40) END FROM s"
    )


class Pipeline:
    """The raw-driver pipeline: a streaming cursor feeding asyncpg COPY through a queue."""

    def __init__(self, source: str, urls: dict[str, sa.URL]) -> None:
        self.source = source
        self.urls = urls
        self.pg: Any = None
        self.src: Any = None

    async def start(self) -> None:
        import asyncpg

        pg = self.urls[POSTGRESQL]
        self.pg = await asyncpg.connect(
            host=pg.host,
            port=pg.port or 5432,
            user=pg.username,
            password=pg.password,
            database=pg.database,
        )
        if self.source == MYSQL:
            import aiomysql

            my = self.urls[MYSQL]
            self.src = await aiomysql.connect(
                host=my.host,
                port=my.port or 3306,
                user=my.username,
                password=my.password or "",
                db=my.database,
                charset="utf8mb4",
                autocommit=True,
            )
        else:
            import aiosqlite

            self.src = await aiosqlite.connect(self.urls[SQLITE].database)

    async def read(self, queue: asyncio.Queue[Any]) -> None:
        sql = f"SELECT {', '.join(COLUMNS)} FROM src"
        if self.source == MYSQL:
            import aiomysql

            async with self.src.cursor(aiomysql.SSCursor) as cursor:
                await cursor.execute(sql)
                while rows := await cursor.fetchmany(BATCH_SIZE):
                    await queue.put(
                        [
                            (
                                r[0],
                                r[1],
                                r[2],
                                r[3],
                                r[4],
                                None if r[5] is None else r[5] == 1,
                                r[6],
                            )
                            for r in rows
                        ]
                    )
        else:
            date, stamp, dec = dt.date.fromisoformat, dt.datetime.fromisoformat, decimal.Decimal
            async with self.src.execute(sql) as cursor:
                while rows := await cursor.fetchmany(BATCH_SIZE):
                    await queue.put(
                        [
                            (
                                r[0],
                                r[1],
                                None if r[2] is None else dec(str(r[2])),
                                None if r[3] is None else date(r[3]),
                                None if r[4] is None else stamp(r[4]),
                                None if r[5] is None else r[5] == 1,
                                r[6],
                            )
                            for r in rows
                        ]
                    )
        await queue.put(None)

    async def run(self) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        reader = asyncio.get_running_loop().create_task(self.read(queue))
        while (batch := await queue.get()) is not None:
            async with self.pg.transaction():
                await self.pg.copy_records_to_table("dst", records=batch, columns=COLUMNS)
        await reader

    async def close(self) -> None:
        await self.pg.close()
        if self.source == MYSQL:
            self.src.close()
        else:
            await self.src.close()


async def main(options: Any) -> None:
    rows = 5_000 if options.quick else 200_000
    repeat = options.repeat or (2 if options.quick else 3)
    memory_rows = (rows, rows * 5)
    sources = [b for b in (MYSQL, SQLITE) if not await unreachable(b)]
    if await unreachable(POSTGRESQL):
        print(f"\netl: skipped ({await unreachable(POSTGRESQL)})")
        return
    async with databases("etl", POSTGRESQL, *sources) as urls:
        keys = {POSTGRESQL: "pg", MYSQL: "my", SQLITE: "lite"}
        db = AsyncBind(binds={keys[b]: urls[b] for b in urls})
        src = {b: db.Table("src", *etl_columns(), bind_key=keys[b]) for b in sources}
        dst = db.Table("dst", *etl_columns(), bind_key="pg")
        await db.create_all()

        class Base(sa_orm.DeclarativeBase):
            pass

        class Source(Base):
            __table__ = sa.Table("src", sa.MetaData(), *etl_columns())

        class Target(Base):
            __table__ = sa.Table("dst", sa.MetaData(), *etl_columns())

        plain = {b: create_async_engine(with_driver(urls[b], DRIVERS[b])) for b in urls}

        async def fill(backend: str, count: int) -> None:
            async with db.get_engine(keys[backend]).begin() as conn:
                await conn.execute(src[backend].delete())
                await conn.exec_driver_sql(fill_sql(backend, count))

        async def truncate() -> None:
            async with db.get_engine("pg").begin() as conn:
                await conn.exec_driver_sql("TRUNCATE dst")

        def timed(work: Callable[[], Awaitable[Any]], doc: str) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                await truncate()
                started = time.perf_counter()
                await work()
                return time.perf_counter() - started

            run.__doc__ = doc
            return run

        pipelines: list[Pipeline] = []
        try:
            if MYSQL in sources:
                await whole_processes(options, urls, fill, truncate, db, dst)
            for backend in sources:
                await fill(backend, rows)
                pipeline = Pipeline(backend, urls)
                await pipeline.start()
                pipelines.append(pipeline)
                raw_name = (
                    "raw aiomysql -> asyncpg COPY"
                    if backend == MYSQL
                    else ("raw aiosqlite -> asyncpg COPY")
                )

                async def orm(backend: str = backend) -> None:
                    async with async_sessionmaker(plain[backend])() as reader:
                        objects = (await reader.scalars(sa.select(Source))).all()
                    async with async_sessionmaker(plain[POSTGRESQL])() as writer:
                        writer.add_all(
                            Target(**{c: getattr(o, c) for c in COLUMNS}) for o in objects
                        )
                        await writer.commit()

                table = Table(
                    f"etl: {rows:,} rows {NAMES[backend]} -> PostgreSQL, {repeat} runs",
                    repeat=repeat,
                    ops=rows,
                    unit="row",
                    warmup=False,
                )
                table.case(
                    raw_name,
                    timed(pipeline.run, f"{raw_name}, streaming cursor, batches of {BATCH_SIZE:,}"),
                )
                table.case(
                    "asyncbind",
                    timed(
                        lambda b=backend: db.copy(src[b], dst),
                        "asyncbind db.copy(source, target)",
                    ),
                    vs=[raw_name, "naive ORM"],
                )
                table.case(
                    "naive ORM",
                    timed(orm, "naive ORM: select(Source) -> add_all(Target) -> commit"),
                )
                await table.run()
                await _check_copied(db, dst, rows)

            if MYSQL in sources:
                print(f"\netl: peak Python memory (tracemalloc), {NAMES[MYSQL]} -> PostgreSQL")
                for count in memory_rows:
                    await fill(MYSQL, count)
                    await truncate()
                    peak = await _peak(lambda: db.copy(src[MYSQL], dst))
                    print(f"  asyncbind db.copy(), {count:>9,} rows: peak {peak / 2**20:7.1f} MiB")
                await fill(MYSQL, memory_rows[0])
                await truncate()
                peak = await _peak(lambda: orm_copy(plain, Source, Target))
                rows_text = f"{memory_rows[0]:>9,}"
                print(f"  naive ORM add_all,     {rows_text} rows: peak {peak / 2**20:7.1f} MiB")
        finally:
            for pipeline in pipelines:
                await pipeline.close()
            await db.drop_all()
            await db.dispose()
            for engine in plain.values():
                await engine.dispose()


async def whole_processes(
    options: Any,
    urls: dict[str, sa.URL],
    fill: Callable[[str, int], Awaitable[None]],
    truncate: Callable[[], Awaitable[None]],
    db: AsyncBind,
    dst: sa.Table,
) -> None:
    """pgloader, the raw drivers and db.copy, MariaDB -> PostgreSQL, each a process of its own."""
    rows = 20_000 if options.quick else 1_000_000
    repeat = options.repeat or (1 if options.quick else 3)
    await fill(MYSQL, rows)
    mysql = urls[MYSQL].set(drivername="mysql")
    postgresql = urls[POSTGRESQL].set(drivername="postgresql")
    env = {
        **os.environ,
        "ETL_MYSQL_URL": mysql.render_as_string(hide_password=False),
        "ETL_POSTGRESQL_URL": postgresql.render_as_string(hide_password=False),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }

    def process(*command: str) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            await truncate()
            started = time.perf_counter()
            child = await asyncio.create_subprocess_exec(
                *command,
                env=env,
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, errors = await child.communicate()
            took = time.perf_counter() - started
            if child.returncode:
                text = hide_passwords(errors.decode(errors="replace"), [mysql, postgresql])
                raise RuntimeError(f"etl: {command[-1]!r} failed: {text[-2000:]}")
            await _check_copied(db, dst, rows)
            return took

        return run

    python = [sys.executable, "-m", "benchmarks.etlprocess"]
    table = Table(
        f"etl: {rows:,} rows MariaDB -> PostgreSQL, whole processes, {repeat} runs",
        repeat=repeat,
        ops=rows,
        unit="row",
        warmup=False,
    )
    pgloader = shutil.which("pgloader")
    if pgloader:
        table.title += f" ({_pgloader_version(pgloader)})"
    with tempfile.TemporaryDirectory(prefix="asyncbind_bench_pgloader_") as folder:
        commands = _write(Path(folder) / "copy.load", _pgloader_commands(mysql, postgresql))
        table.case(
            "pgloader",
            process(pgloader or "pgloader", "--quiet", commands),
            doc="pgloader, data only into the existing table",
            skip=None if pgloader else "skipped (not installed: apt-get install pgloader)",
        )
        no_asyncmy = None if importlib.util.find_spec("asyncmy") else "skipped (no asyncmy)"
        table.case(
            "raw",
            process(*python, "raw"),
            doc="raw asyncmy unbuffered cursor -> asyncpg COPY, one stream",
            vs=["pgloader"],
            skip=no_asyncmy,
        )
        cases = [("aiomysql", 1), ("asyncmy", 1), ("asyncmy", 2), ("asyncmy", 4)]
        if options.quick:
            cases = [("asyncmy", 1), ("asyncmy", 2)]
        for driver, parallel in cases:
            table.case(
                f"asyncbind {driver} {parallel}",
                process(*python, f"asyncbind:{driver}:{parallel}"),
                doc=f"asyncbind db.copy, mysql+{driver}, parallel={parallel}",
                vs=["pgloader", "raw"],
                skip=no_asyncmy if driver == "asyncmy" else None,
            )
        await table.run()


def _pgloader_version(pgloader: str) -> str:
    found = subprocess.run([pgloader, "--version"], capture_output=True, text=True, check=False)
    return found.stdout.splitlines()[0] if found.stdout else "pgloader"


def _write(path: Path, text: str) -> str:
    """Write ``text`` (it holds passwords) to a file only its owner reads; its path."""
    path.touch(mode=0o600)
    path.write_text(text, encoding="utf-8")
    return str(path)


def _pgloader_commands(mysql: sa.URL, postgresql: sa.URL) -> str:
    """pgloader's commands: the data of MariaDB's ``src`` into PostgreSQL's existing ``dst``."""
    return (
        f"LOAD DATABASE\n"
        f"  FROM {mysql.render_as_string(hide_password=False)}\n"
        f"  INTO {postgresql.render_as_string(hide_password=False)}\n"
        "WITH data only\n"
        "INCLUDING ONLY TABLE NAMES MATCHING 'src'\n"
        f"ALTER SCHEMA '{mysql.database}' RENAME TO 'public'\n"
        "ALTER TABLE NAMES MATCHING 'src' RENAME TO 'dst';\n"
    )


async def orm_copy(plain: dict[str, Any], source: Any, target: Any) -> None:
    async with async_sessionmaker(plain[MYSQL])() as reader:
        objects = (await reader.scalars(sa.select(source))).all()
    async with async_sessionmaker(plain[POSTGRESQL])() as writer:
        writer.add_all(target(**{c: getattr(o, c) for c in COLUMNS}) for o in objects)
        await writer.commit()


async def _peak(work: Callable[[], Awaitable[Any]]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        await work()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


async def _check_copied(db: AsyncBind, dst: sa.Table, rows: int) -> None:
    async with db.get_engine("pg").connect() as conn:
        copied = await conn.scalar(sa.select(sa.func.count()).select_from(dst))
    if copied != rows:
        raise RuntimeError(f"etl: the last case left {copied} rows in 'dst', expected {rows}")
