"""DDL on asyncpg in one round trip (:mod:`asyncbind.directddl`): not prepared, inside the
transaction, with SQLAlchemy's errors, within the statement timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from asyncbind import AsyncBind, StatementTimeoutError, stopping

pytestmark = pytest.mark.postgresql
GUARD = 30


def table() -> sa.Table:
    return sa.Table(
        "thing",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20), index=True),
    )


async def prepared(conn: AsyncConnection) -> list[str]:
    """The statements this connection has prepared on the server (and not yet closed)."""
    rows = await conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements")
    return [str(statement).lstrip() for statement in rows.scalars()]


async def create_in_transaction(engine: AsyncEngine) -> list[str]:
    """Create ``thing`` after a first query began the transaction, then roll back; what the
    connection had prepared by then."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
        await conn.run_sync(table().create)
        statements = await prepared(conn)
        await conn.rollback()
    return statements


async def test_ddl_in_a_transaction_is_sent_unprepared_and_rolls_back(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    url = await new_database("postgresql")
    db = make_db(url)
    plain = create_async_engine(sa.make_url(url).set(drivername="postgresql+asyncpg"))
    try:
        ours = await create_in_transaction(db.engine)
        theirs = await create_in_transaction(plain)
    finally:
        await plain.dispose()
    assert not [s for s in ours if s.startswith("CREATE")], ours
    assert [s for s in theirs if s.startswith("CREATE")], "plain SQLAlchemy prepares its DDL"
    async with db.engine.connect() as conn:  # both ran in the transaction rolled back
        assert not await conn.run_sync(lambda sync: sa.inspect(sync).has_table("thing"))


async def test_a_failing_ddl_raises_what_sqlalchemy_raises(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    url = await new_database("postgresql")
    db = make_db(url)
    async with db.engine.begin() as conn:
        await conn.run_sync(table().create)
    plain = create_async_engine(sa.make_url(url).set(drivername="postgresql+asyncpg"))
    errors = []
    try:
        for engine in (db.engine, plain):
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
                with pytest.raises(sa.exc.ProgrammingError) as info:
                    await conn.run_sync(table().create)
                errors.append(info.value)
                await conn.rollback()
                assert (await conn.execute(sa.text("SELECT 2"))).scalar() == 2
    finally:
        await plain.dispose()
    ours, theirs = errors
    assert type(ours) is type(theirs) and type(ours.orig) is type(theirs.orig)
    assert getattr(ours.orig, "sqlstate", None) == "42P07"  # duplicate_table
    assert 'relation "thing" already exists' in str(ours)


async def test_ddl_outside_a_transaction_goes_sqlalchemys_way(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(await new_database("postgresql"))
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.run_sync(table().create)
    async with db.engine.connect() as other:
        assert await other.run_sync(lambda sync: sa.inspect(sync).has_table("thing"))


async def test_ddl_is_bounded_by_the_statement_timeout(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        "sqlite://",
        binds={"slow": {"url": await new_database("postgresql"), "statement_timeout": 2.0}},
    )
    engine = db.engines["slow"]
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
        await conn.run_sync(table().create)
        assert not [s for s in await prepared(conn) if s.startswith("CREATE")]
        await conn.commit()
    sleep = sa.DDL("DO $$ BEGIN PERFORM pg_sleep(30); END $$")
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
        with pytest.raises(StatementTimeoutError) as info:
            await conn.execute(sleep)
    assert info.value.bind_key == "slow"


async def test_a_create_all_cancelled_mid_ddl_leaves_nothing_behind(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(await new_database("postgresql"))
    for i in range(10):
        db.Table(f"t{i}", sa.Column("id", sa.Integer, primary_key=True))
    creates = 0
    task: asyncio.Task[None] | None = None

    def cancel_at_the_third(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        nonlocal creates
        if sql.lstrip().startswith("CREATE TABLE"):
            creates += 1
            if creates == 3 and task is not None:
                task.cancel()

    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", cancel_at_the_third)
    task = asyncio.create_task(db.create_all())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)
    sa.event.remove(db.engine.sync_engine, "before_cursor_execute", cancel_at_the_third)
    assert creates == 3
    await stopping.settle([db.engine])  # the DDL cut short, ended on the server
    assert db.engine.sync_engine.pool.checkedout() == 0
    async with db.engine.connect() as conn:  # the transaction was rolled back: no table
        assert await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()) == []
    await db.create_all()
    async with db.engine.connect() as conn:
        names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    assert sorted(names) == sorted(f"t{i}" for i in range(10))
