"""Closing connections: a goodbye that fails drops the connection instead of leaving it open, and
is no error to report when the server had ended the connection already; a connection in use while
its pool is disposed is closed when it comes back; on MySQL and MariaDB a rollback after a stream
left unread drops the connection instead of reading the rest first."""

# ruff: noqa: F811  (the fixture imported from test_loops is a test argument here)

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from quiet import Reports
from serverstate import server_fetch
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.util import greenlet_spawn
from test_loops import BACKEND_OF, SESSIONS, Binds, binds  # noqa: F401  (a fixture)

from asyncbind import AsyncBind

GUARD = 30


async def test_a_failing_close_where_the_dialect_has_no_terminate_is_not_retried_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # psycopg's async dialect has no do_terminate() of its own: SQLAlchemy's default closes the
    # connection instead. When that close fails, dropping the connection tries it once more and
    # reports the failure, instead of coming back to itself. SQLite stands in for such a
    # dialect, its terminate taken away and its connections' close failing.
    monkeypatch.setattr(SQLiteDialect_aiosqlite, "do_terminate", DefaultDialect.do_terminate)
    db = AsyncBind(f"sqlite:///{tmp_path / 'one.db'}")
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"))
    closes: list[Any] = []

    def failing_close(connection: Any) -> None:
        closes.append(connection)
        raise ConnectionResetError("the server reset the connection")

    monkeypatch.setattr(AsyncAdapt_aiosqlite_connection, "close", failing_close)
    with caplog.at_level(logging.ERROR):
        await db.dispose()
    monkeypatch.undo()
    assert len(closes) == 2, (
        f"close() was tried {len(closes)} times, not twice (politely, then to drop)"
    )
    connection, again = closes  # the polite close, then the drop
    assert again is connection
    assert [record.getMessage().split(" <")[0] for record in caplog.records] == [
        "Exception closing connection"
    ]
    await greenlet_spawn(connection.close)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
async def test_dispose_after_the_server_ended_idle_connections_closes_each_quietly(
    backend: str,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An administrator (or a restart) ends the connections idle in the pool. Disposing of the
    pool then closes every one of them with nothing logged, and the bind works again."""
    url = await new_database(backend)
    db = make_db(url)
    opened: list[Any] = []
    sa.event.listen(
        db.engine.sync_engine,
        "connect",
        lambda conn, _record: opened.append(conn.driver_connection),
    )

    sessions = 3
    holding: list[int] = []
    all_holding = asyncio.Event()

    async def server_id() -> int:
        async with db.session() as session:
            sql = "SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()"
            connection_id = int((await session.execute(sa.text(sql))).scalar_one())
            holding.append(connection_id)
            if len(holding) == sessions:
                all_holding.set()
            await all_holding.wait()  # so that each session has a connection of its own
            return connection_id

    async with asyncio.timeout(GUARD):
        ids = await asyncio.gather(*(server_id() for _ in range(sessions)))
    assert len(opened) == len(set(ids)) == sessions
    for connection_id in ids:
        if backend == "postgresql":
            await server_fetch(backend, "SELECT pg_terminate_backend($1)", connection_id)
        else:
            await server_fetch(backend, f"KILL {int(connection_id)}")
    database = sa.make_url(url).database
    if backend == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
    else:
        sql = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = %s"
    async with asyncio.timeout(GUARD):
        while (await server_fetch(backend, sql, database))[0][0]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING):
        await db.dispose()
    assert [record.getMessage() for record in caplog.records] == []
    closed = [c.is_closed() if backend == "postgresql" else c.closed for c in opened]
    assert closed == [True] * len(opened)
    async with db.session() as session:
        assert (await session.execute(sa.text("SELECT 1"))).scalar() == 1


# -- a connection in use while its pool is disposed -------------------------------------------


@pytest.mark.sqlite
@pytest.mark.postgresql
@pytest.mark.mysql
async def test_a_connection_in_use_while_its_pool_is_disposed_is_closed_when_it_comes_back(
    binds: Binds,
) -> None:
    """An application shuts down (lifespan end, after_serving) while a request still holds a
    connection of each bind. dispose() leaves those alone; when the request ends they are closed
    as they come back, not kept open in the disposed pool until the garbage collector finds it
    (and reported then as unclosed). The binds pool their connections as before afterwards."""
    db = binds.db
    reports = Reports().start()
    try:
        baseline = await binds.connections()
        async with db.session() as session:
            for key in BACKEND_OF:
                await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})
            await db.dispose()
            in_use = await binds.connections()
        after_request = await binds.connections(expected=baseline)
        await db.dispose()
        gc.collect()
    finally:
        reports.stop()
    assert in_use == {key: baseline[key] + 1 for key in BACKEND_OF}
    assert after_request == baseline
    assert reports.all() == {kind: [] for kind in reports.all()}
    await binds.use()
    pooled = {key: status.checked_in for key, status in db.pool_status().items()}
    assert pooled == {key: SESSIONS for key in BACKEND_OF}
    assert await binds.connections() == {key: baseline[key] + SESSIONS for key in BACKEND_OF}


# -- a rollback after a stream left unread (MySQL, MariaDB) ------------------------------------

#: Rows streamed: far more than one read of the socket holds, so that most are left unread.
STREAMED = 20_000


async def connection_id(session: Any) -> int:
    return int((await session.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one())


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_a_stream_left_unread_is_not_read_to_its_end_before_the_rollback(
    driver: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A session whose stream was cancelled ends without reading the rest of the result (the
    driver would warn "Previous unbuffered result was left incomplete" as it did): its connection
    is dropped, the server ends it, and the next session gets a new one. A session that rolls
    back after leaving a stream early goes on. A result read to its end keeps its connection."""
    url = (await new_database("mysql")).replace("mysql://", f"mysql+{driver}://", 1)
    db = make_db(url, engine_options={"pool_size": 1, "max_overflow": 0})
    sql = sa.text(f"SELECT seq, REPEAT('x', 100) FROM seq_1_to_{STREAMED}")  # MariaDB's sequences
    read: list[int] = []
    reading = asyncio.Event()
    ids: list[int] = []

    async def stream() -> None:
        async with db.session() as session:
            ids.append(await connection_id(session))
            async for row in await session.stream(sql):
                read.append(row[0])
                reading.set()
                await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with asyncio.timeout(GUARD):
            task = asyncio.create_task(stream())
            await reading.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert 0 < len(read) < STREAMED
            async with db.session() as session:
                ids.append(await connection_id(session))
                left = await session.stream(sql)
                assert (await left.fetchmany(10))[-1][0] == 10
                await session.rollback()
                ids.append(await connection_id(session))  # the session goes on
                assert (await session.execute(sql)).all()[-1][0] == STREAMED  # read to its end
            async with db.session() as session:
                ids.append(await connection_id(session))
    assert [str(w.message) for w in caught] == []
    first, after_cancel, after_rollback, kept = ids
    assert len({first, after_cancel, after_rollback}) == 3, ids  # dropped twice
    assert kept == after_rollback  # a result read to its end: the connection stays

    async def still_connected() -> list[tuple[Any, ...]]:
        sql = "SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN (%s, %s)"
        return await server_fetch("mysql", sql, first, after_cancel)

    async with asyncio.timeout(GUARD):
        while await still_connected():  # noqa: ASYNC110 (the server notices the closed sockets)
            await asyncio.sleep(0.05)
