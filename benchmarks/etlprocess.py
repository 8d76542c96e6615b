"""One copy of the etl suite's whole-process table, run as a process of its own.

``python -m benchmarks.etlprocess CASE`` copies table ``src`` of ``ETL_MYSQL_URL`` into table
``dst`` of ``ETL_POSTGRESQL_URL`` (URLs in the environment, not on the command line, so that no
password shows in a process list) and exits. Cases:

* ``raw``: asyncmy's unbuffered cursor -> asyncpg ``COPY``, one stream, the next batch read while
  the last one is written, each batch in its own transaction;
* ``asyncbind:DRIVER:N``: ``db.copy(src, dst, parallel=N)`` with ``mysql+DRIVER://`` as the source.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import sqlalchemy as sa

from asyncbind import AsyncBind
from asyncbind.bulk import BATCH_SIZE

COLUMNS = ("id", "name", "amount", "day", "at", "flag", "note")


def etl_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("day", sa.Date),
        sa.Column("at", sa.DateTime),
        sa.Column("flag", sa.Boolean),
        sa.Column("note", sa.Text),
    ]


async def raw(mysql: sa.URL, postgresql: sa.URL) -> None:
    import asyncmy
    import asyncpg
    from asyncmy.cursors import SSCursor

    pg = await asyncpg.connect(
        host=postgresql.host,
        port=postgresql.port or 5432,
        user=postgresql.username,
        password=postgresql.password,
        database=postgresql.database,
    )
    my = await asyncmy.connect(
        host=mysql.host,
        port=mysql.port or 3306,
        user=mysql.username,
        password=mysql.password or "",
        db=mysql.database,
        charset="utf8mb4",
        autocommit=True,
    )
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def read() -> None:
        async with my.cursor(SSCursor) as cursor:
            await cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM src")
            while rows := await cursor.fetchmany(BATCH_SIZE):
                flag = COLUMNS.index("flag")
                await queue.put(
                    [
                        (*r[:flag], None if r[flag] is None else r[flag] == 1, *r[flag + 1 :])
                        for r in rows
                    ]
                )
        await queue.put(None)

    reader = asyncio.get_running_loop().create_task(read())
    while (batch := await queue.get()) is not None:
        async with pg.transaction():
            await pg.copy_records_to_table("dst", records=batch, columns=COLUMNS)
    await reader
    await pg.close()
    my.close()


async def with_asyncbind(mysql: sa.URL, postgresql: sa.URL, driver: str, parallel: int) -> None:
    db = AsyncBind(binds={"my": mysql.set(drivername=f"mysql+{driver}"), "pg": postgresql})
    source = db.Table("src", *etl_columns(), bind_key="my")
    target = db.Table("dst", *etl_columns(), bind_key="pg")
    try:
        await db.copy(source, target, parallel=parallel)
    finally:
        await db.dispose()


def main(case: str) -> None:
    mysql = sa.make_url(os.environ["ETL_MYSQL_URL"])
    postgresql = sa.make_url(os.environ["ETL_POSTGRESQL_URL"])
    if case == "raw":
        asyncio.run(raw(mysql, postgresql))
    else:
        _, driver, parallel = case.split(":")
        asyncio.run(with_asyncbind(mysql, postgresql, driver, int(parallel)))


if __name__ == "__main__":
    main(sys.argv[1])
