"""The check at check-in: a connection that comes back to its pool inside a transaction that
SQLAlchemy did not end is discarded, never handed out again, on real servers."""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from serverstate import database_of, open_transactions, server_connections
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncbind import AsyncBind

SERVERS = [pytest.param(b, id=b, marks=getattr(pytest.mark, b)) for b in ("postgresql", "mysql")]


async def begin_on_the_driver(conn: AsyncConnection, backend: str) -> Callable[[], Awaitable[Any]]:
    """Open a transaction on ``conn``'s driver connection, behind SQLAlchemy's back, and write a
    row (id 1) in it. Returns what rolls that transaction back."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    if backend == "postgresql":
        transaction = driver.transaction()
        await transaction.start()
        await driver.execute("INSERT INTO leak (id) VALUES (1)")
        return transaction.rollback  # type: ignore[no-any-return]
    if backend == "mysql":
        await driver.begin()
        async with driver.cursor() as cursor:
            await cursor.execute("INSERT INTO leak (id) VALUES (1)")
    else:
        await driver.execute("BEGIN")
        await driver.execute("INSERT INTO leak (id) VALUES (1)")
    return driver.rollback  # type: ignore[no-any-return]


def leak_table(db: AsyncBind) -> sa.Table:
    return db.Table("leak", sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))


async def committed_ids(url: str, make_db: Callable[..., AsyncBind]) -> list[int]:
    """The ids in table 'leak', read over a connection of its own."""
    probe = make_db(url, engine_options={"poolclass": sa.NullPool})
    async with probe.engine.connect() as conn:
        return list((await conn.execute(sa.text("SELECT id FROM leak ORDER BY id"))).scalars())


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.split(".")[0] in ("sqlalchemy", "asyncbind")
    ]


@pytest.mark.parametrize("reset_on_return", ["rollback", None], ids=["reset", "no-reset"])
async def test_a_transaction_left_open_on_the_driver_is_not_pooled(
    backend: str,
    url: str,
    reset_on_return: str | None,
    make_db: Callable[..., AsyncBind],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    db = make_db(
        url,
        engine_options={
            "pool_size": 1,
            "max_overflow": 0,
            "pool_reset_on_return": reset_on_return,
        },
    )
    leak = leak_table(db)
    await db.create_all()

    async with db.engine.connect() as conn:
        await begin_on_the_driver(conn, backend)
    # The next user of the pool's only connection commits a row of its own.
    async with db.session() as session:
        await session.execute(leak.insert().values(id=2))
        await session.commit()

    # Its commit landed, and the row of the transaction that was never committed did not.
    assert await committed_ids(url, make_db) == [2]
    if backend != "sqlite":
        database = database_of(url)
        assert await open_transactions(backend, database) == []
        assert await server_connections(backend, database) == 1  # the pool's one connection
    assert problems(caplog) == []
    discarded = [r for r in caplog.records if r.name == "asyncbind" and "discarded" in r.message]
    # SQLAlchemy's own reset ends the driver's transaction, except on asyncpg (whose rollback
    # only knows SQLAlchemy's transaction) and where the reset is turned off.
    assert len(discarded) == (1 if backend == "postgresql" or reset_on_return is None else 0)
    assert all(r.levelno == logging.INFO and "The default bind" in r.message for r in discarded)


@pytest.mark.sqlite
async def test_an_in_memory_database_keeps_its_connection_in_a_drivers_transaction(
    make_db: Callable[..., AsyncBind],
) -> None:
    """The one connection of an in-memory database is the database: back in the pool inside a
    transaction of the driver's (with no reset on return to end it), it is kept, and so is every
    table, the rows committed before and the transaction, which its owner ends."""
    db = make_db("sqlite://", engine_options={"pool_reset_on_return": None})
    leak = leak_table(db)
    await db.create_all()
    async with db.engine.begin() as conn:
        await conn.execute(leak.insert().values(id=2))

    async with db.engine.connect() as conn:
        rollback = await begin_on_the_driver(conn, "sqlite")
    async with db.engine.connect() as conn:
        assert list(await conn.scalars(sa.text("SELECT id FROM leak ORDER BY id"))) == [1, 2]
        await rollback()
        assert list(await conn.scalars(sa.text("SELECT id FROM leak"))) == [2]


@pytest.mark.mysql
async def test_an_asyncmy_transaction_left_open_on_the_driver_is_not_pooled(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind], caplog: pytest.LogCaptureFixture
) -> None:
    """asyncmy (``mysql+asyncmy://``) is checked as aiomysql is."""
    caplog.set_level(logging.INFO)
    url = sa.make_url(await new_database("mysql")).set(drivername="mysql+asyncmy")
    url_text = url.render_as_string(hide_password=False)
    db = make_db(
        url_text,
        engine_options={"pool_size": 1, "max_overflow": 0, "pool_reset_on_return": None},
    )
    leak = leak_table(db)
    await db.create_all()

    async with db.engine.connect() as conn:
        await begin_on_the_driver(conn, "mysql")
    async with db.session() as session:
        await session.execute(leak.insert().values(id=2))
        await session.commit()

    assert await committed_ids(url_text, make_db) == [2]
    assert await open_transactions("mysql", database_of(url_text)) == []
    discarded = [r for r in caplog.records if r.name == "asyncbind" and "discarded" in r.message]
    assert len(discarded) == 1
    assert problems(caplog) == []


@pytest.mark.postgresql
async def test_a_driver_transaction_inside_sqlalchemys_is_not_pooled(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind], caplog: pytest.LogCaptureFixture
) -> None:
    """What the bulk path used to do: asyncpg's own transaction opened inside ``engine.begin()``
    before SQLAlchemy's adapter had sent its BEGIN. SQLAlchemy's commit has nothing to commit,
    and the connection used to go back to the pool with the server in a transaction: every later
    commit on it was a RELEASE SAVEPOINT that saved nothing."""
    url = await new_database("postgresql")
    db = make_db(url, engine_options={"pool_size": 1, "max_overflow": 0})
    leak = leak_table(db)
    await db.create_all()

    async with db.engine.begin() as conn:
        await begin_on_the_driver(conn, "postgresql")
    for i in range(2, 5):
        async with db.session() as session:
            await session.execute(leak.insert().values(id=i))
            await session.commit()

    assert await committed_ids(url, make_db) == [2, 3, 4]
    assert await open_transactions("postgresql", database_of(url)) == []
    assert problems(caplog) == []


async def test_connections_that_end_cleanly_are_kept(
    backend: str, url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """The check costs the normal path nothing but an attribute read: one connection serves
    sessions that commit, roll back and close, and raw driver work that ends its transaction."""
    db = make_db(url, engine_options={"pool_size": 1, "max_overflow": 0})
    leak = leak_table(db)
    await db.create_all()
    invalidated: list[object] = []
    sa.event.listen(db.engine.sync_engine, "invalidate", lambda *args: invalidated.append(args))
    drivers: set[int] = set()

    for i in range(30):
        async with db.session() as session:
            await session.execute(leak.insert().values(id=i))
            if i % 3 == 0:
                await session.commit()
            elif i % 3 == 1:
                await session.rollback()
            conn = await session.connection()
            drivers.add(id((await conn.get_raw_connection()).driver_connection))
    async with db.engine.connect() as conn:
        rollback = await begin_on_the_driver(conn, backend)
        drivers.add(id((await conn.get_raw_connection()).driver_connection))
        await rollback()

    assert invalidated == []
    assert len(drivers) == 1
    assert await committed_ids(url, make_db) == list(range(0, 30, 3))


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
async def test_a_connection_collected_unreturned_is_not_pooled(
    backend: str, url: str, make_db: Callable[..., AsyncBind], caplog: pytest.LogCaptureFixture
) -> None:
    """The pool meets a connection outside the event loop when the garbage collector finds one
    that was never returned: SQLAlchemy then does no I/O and terminates it instead of checking
    it in, so it is never handed out in its transaction either."""
    db = make_db(url, engine_options={"pool_size": 1, "max_overflow": 0})
    leak = leak_table(db)
    await db.create_all()

    conn = await db.engine.connect()
    await begin_on_the_driver(conn, backend)
    with pytest.warns(sa_exc.SAWarning, match="garbage collector"):
        del conn
        gc.collect()

    async with db.session() as session:
        await session.execute(leak.insert().values(id=2))
        await session.commit()
    assert await committed_ids(url, make_db) == [2]
    assert await open_transactions(backend, database_of(url)) == []
    # Nothing but SQLAlchemy's own complaint about the connection that was never returned.
    assert [p for p in problems(caplog) if "garbage collector" not in p] == []
