"""A statement asyncbind gives up on (past ``statement_timeout``, or its task cancelled) is
stopped on the server too, so that it neither runs on nor holds its locks: on the shared
PostgreSQL and MariaDB servers, each test in a database of its own. SQLite has no server: its
statement, run in aiosqlite's thread, is interrupted instead. PgBouncer hides the server's
connection ids: its binds stop nothing."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase, mysql_admin, postgresql_admin
from faultproxy import FaultProxy
from replication import wait_until
from serverstate import sqlite_write_locked

from asyncbind import AsyncBind, StatementTimeoutError
from asyncbind.stopping import applies
from asyncbind.urls import render_url

MakeDb = Callable[..., AsyncBind]

#: Long enough that a statement still running after the test's guard was not stopped.
SLEEP_SECONDS = 120
#: How long the tests wait for the server to end a statement before they fail.
GUARD = 30.0


@dataclass
class Server:
    backend: str  # "postgresql" or "mysql"
    url: str


@pytest.fixture(
    params=[
        pytest.param(("postgresql", None), id="asyncpg", marks=pytest.mark.postgresql),
        pytest.param(("mysql", None), id="aiomysql", marks=pytest.mark.mysql),
        pytest.param(("mysql", "mysql+asyncmy"), id="asyncmy", marks=pytest.mark.mysql),
        # SQLAlchemy's mariadb dialect, which mariadb:// URLs give.
        pytest.param(("mysql", "mariadb+aiomysql"), id="mariadb-url", marks=pytest.mark.mysql),
    ]
)
async def server(request: pytest.FixtureRequest, new_database: NewDatabase) -> Server:
    """A new database on a server, with each driver and dialect asyncbind stops statements
    through."""
    backend, drivername = request.param
    url = sa.make_url(await new_database(backend))
    if drivername is not None:
        url = url.set(drivername=drivername)
    return Server(backend, url.render_as_string(hide_password=False))


def sleeping(backend: str, tag: str) -> sa.TextClause:
    """A statement that runs on and on, named by ``tag``, which its server does not stop when
    the client goes away: ``pg_sleep()`` (for ``SLEEP_SECONDS``), and on MariaDB ``BENCHMARK()``,
    whose loop, unlike ``SLEEP()``'s, never looks at the connection (for hours)."""
    if backend == "postgresql":
        return sa.text(f"SELECT pg_sleep({SLEEP_SECONDS}) AS {tag}")
    return sa.text(f"SELECT BENCHMARK(1000000000000, MD5('{tag}')) AS {tag}")


async def running(backend: str, tag: str) -> int:
    """How many statements naming ``tag`` the server is running, seen from an admin connection."""
    pattern = f"%{tag}%"
    if backend == "postgresql":
        conn = await postgresql_admin()
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query LIKE $1 AND pid <> pg_backend_pid()",
                pattern,
            )
            return int(found)
        finally:
            await conn.close()
    conn = await mysql_admin()
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(
                "SELECT count(*) FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE %s AND ID <> CONNECTION_ID()",
                (pattern,),
            )
            (count,) = await cursor.fetchone()
            return int(count)
    finally:
        conn.close()


async def until_stopped(backend: str, tag: str) -> None:
    async def stopped() -> bool:
        return await running(backend, tag) == 0

    await wait_until(stopped, f"the server stopped the statement {tag}", guard=GUARD)


def new_tag() -> str:
    return f"abandoned_{uuid.uuid4().hex[:12]}"


async def items(db: AsyncBind) -> sa.Table:
    item = db.Table(
        "item", sa.Column("id", sa.Integer, primary_key=True), sa.Column("n", sa.Integer)
    )
    await db.create_all()
    async with db.engine.begin() as conn:
        await conn.execute(item.insert().values(id=1, n=0))
    return item


async def test_a_timed_out_statement_stops_on_the_server_and_releases_its_locks(
    server: Server, make_db: MakeDb
) -> None:
    url = server.url
    db = make_db({"url": url, "statement_timeout": 1})
    item = await items(db)
    tag = new_tag()
    with pytest.raises(StatementTimeoutError):
        async with db.session() as session:
            await session.execute(item.update().values(n=1))  # locks row 1
            await session.execute(sleeping(server.backend, tag))
    await until_stopped(server.backend, tag)
    # The abandoned transaction was rolled back and its lock released: another takes the row
    # (waiting at most GUARD seconds for the lock, where it would wait SLEEP_SECONDS).
    other = make_db(url)
    lock_wait = (
        f"SET lock_timeout = '{int(GUARD)}s'"
        if server.backend == "postgresql"
        else f"SET SESSION innodb_lock_wait_timeout = {int(GUARD)}"
    )
    async with other.engine.begin() as conn:
        await conn.execute(sa.text(lock_wait))
        await conn.execute(item.update().values(n=item.c.n + 1))
    async with other.engine.connect() as conn:
        assert await conn.scalar(sa.select(item.c.n)) == 1  # 0, then this update's + 1


async def test_a_cancelled_statement_stops_on_the_server(server: Server, make_db: MakeDb) -> None:
    """Its connection is dropped at once, and asyncbind ends it on the server
    (pg_terminate_backend(), KILL CONNECTION)."""
    db = make_db(server.url)
    tag = new_tag()

    async def sleep() -> None:
        async with db.session() as session:
            await session.execute(sleeping(server.backend, tag))

    task = asyncio.create_task(sleep())

    async def started() -> bool:
        return await running(server.backend, tag) == 1

    await wait_until(started, "the statement started", guard=GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_stopped(server.backend, tag)
    await db.dispose()
    assert db.pool_status()[None].checked_out == 0


@pytest.mark.mysql
async def test_a_storm_of_cancellations_is_stopped_over_one_connection(
    new_database: NewDatabase, make_db: MakeDb
) -> None:
    db = make_db({"url": await new_database("mysql"), "pool_size": 8})
    tags = [new_tag() for _ in range(6)]

    async def run(tag: str) -> None:
        async with db.session() as session:
            await session.execute(sleeping("mysql", tag))

    tasks = [asyncio.create_task(run(tag)) for tag in tags]

    async def all_started() -> bool:
        return all([await running("mysql", tag) == 1 for tag in tags])

    await wait_until(all_started, "the statements started", guard=GUARD)
    checkouts: list[object] = []
    sa.event.listen(db.engine.sync_engine, "checkout", lambda *args: checkouts.append(args))
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    for tag in tags:
        await until_stopped("mysql", tag)
    await db.dispose()
    assert len(checkouts) == 1  # the stopper's, which ended all six


async def test_dispose_waits_for_the_server_to_stop_a_statement(
    server: Server,
) -> None:
    db = AsyncBind({"url": server.url, "statement_timeout": 1})
    tag = new_tag()
    try:
        with pytest.raises(StatementTimeoutError):
            async with db.session() as session:
                await session.execute(sleeping(server.backend, tag))
    finally:
        await db.dispose()
    assert await running(server.backend, tag) == 0  # no waiting: dispose() saw the stop done


@pytest.mark.sqlite
async def test_a_cancelled_sqlite_statement_is_interrupted(tmp_path: Path, make_db: MakeDb) -> None:
    """aiosqlite runs it in a thread a cancellation does not stop: uninterrupted, this INSERT of
    half a billion rows would keep the cancelled task, and the database's write lock, for minutes."""
    path = tmp_path / "long.sqlite"
    db = make_db(f"sqlite:///{path}")
    db.Table("t", sa.Column("x", sa.Integer))
    await db.create_all()

    async def insert() -> None:
        async with db.session() as session:
            await session.execute(
                sa.text(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                    "WHERE x < 500000000) INSERT INTO t SELECT x FROM c"
                )
            )

    task = asyncio.create_task(insert())

    async def writing() -> bool:
        return await asyncio.to_thread(sqlite_write_locked, path)

    await wait_until(writing, "the INSERT started", guard=GUARD)
    task.cancel()
    async with asyncio.timeout(GUARD):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not await asyncio.to_thread(sqlite_write_locked, path)
    async with db.engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM t")) == 0  # rolled back


@pytest.mark.sqlite
@pytest.mark.parametrize("many", [True, False], ids=["executemany", "execute"])
async def test_a_session_insert_cancelled_on_sqlite_leaves_the_file_unlocked(
    tmp_path: Path, make_db: MakeDb, many: bool
) -> None:
    """An INSERT through a session (one row, or many as an ``executemany``), its task cancelled
    as the statement is sent: the connection is discarded, and its transaction rolled back
    first, so that another connection can write to the file at once, not only once the garbage
    collector has freed the statement's cursor."""
    path = tmp_path / "insert.sqlite"
    db = make_db(f"sqlite:///{path}")
    t = db.Table("t", sa.Column("x", sa.Integer))
    await db.create_all()
    sent: list[bool] = []

    def cancel_as_sent(*args: Any) -> None:
        sent.append(True)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # lands at the statement's await

    async def insert() -> None:
        async with db.session() as session:
            await session.execute(t.insert(), [{"x": 1}])  # the transaction writes first
            sa.event.listen(db.engine.sync_engine, "before_cursor_execute", cancel_as_sent)
            rows = [{"x": i} for i in range(1_000)] if many else [{"x": 2}]
            await session.execute(t.insert(), rows)

    async with asyncio.timeout(GUARD):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(insert())
    sa.event.remove(db.engine.sync_engine, "before_cursor_execute", cancel_as_sent)
    assert sent == [True]
    assert not sqlite_write_locked(path)
    assert db.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with db.engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM t")) == 0  # rolled back


@pytest.mark.postgresql
async def test_a_stop_that_cannot_connect_is_a_warning_without_the_password(
    new_database: NewDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    password = "Stop-Secret-5520"  # PostgreSQL trusts local logins: any password is accepted
    url = sa.make_url(await new_database("postgresql")).set(password=password)
    async with FaultProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        db = AsyncBind({"url": proxy.url_for(url), "statement_timeout": 1, "connect_timeout": 2})
        engine_url = db.engine.url
        tag = new_tag()
        try:
            async with db.session() as session:
                await session.execute(sa.text("SELECT 1"))  # connected before the outage
                await proxy.set_mode("refuse")  # no new connection, the open one works
                with (
                    caplog.at_level(logging.WARNING, logger="asyncbind"),
                    pytest.raises(StatementTimeoutError),
                ):
                    await session.execute(sleeping("postgresql", tag))
                await session.rollback()
        finally:
            with caplog.at_level(logging.WARNING, logger="asyncbind"):
                await db.dispose()
    warnings = [r.getMessage() for r in caplog.records if "could not end" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].startswith("The default bind: could not end server connection ")
    assert f" on {render_url(engine_url)}, whose statement" in warnings[0]
    assert password not in caplog.text
    # Unstopped, the statement runs on (until the fixture drops its database WITH (FORCE)).
    assert await running("postgresql", tag) == 1


@pytest.mark.parametrize(
    ("url", "options", "stops"),
    [
        ("sqlite+aiosqlite://", {}, False),
        ("sqlite+aiosqlite:///file.sqlite", {}, False),
        ("postgresql+asyncpg://u@h/d", {}, True),
        ("postgresql+asyncpg://u@h/d", {"pgbouncer": True}, False),
        ("mysql+aiomysql://u@h/d", {}, True),
        ("mysql+asyncmy://u@h/d", {}, True),
        ("mariadb://u@h/d", {}, True),
    ],
)
def test_which_binds_stop_statements_on_the_server(
    url: str, options: dict[str, Any], stops: bool
) -> None:
    db = AsyncBind({"url": url, **options})  # no connection is made
    sync = db.engine.sync_engine
    assert applies(sync.dialect, pgbouncer=bool(options.get("pgbouncer"))) is stops
    listeners = [f.__qualname__ for f in sync.dialect.dispatch.handle_error]
    assert ("listener.<locals>.stop" in listeners) is stops
    # SQLite's statements are interrupted instead (no server to end them on); not those on the
    # one connection an in-memory database's sessions share, which may be another task's.
    assert ("interrupt_listener" in listeners) is (url == "sqlite+aiosqlite:///file.sqlite")
