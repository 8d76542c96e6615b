"""``statement_timeout`` on real servers: every way a statement reaches the driver, a commit and a
rollback are abandoned past it, with an error naming the bind; the connection is dropped, and the
bind recovers. (Pre-ping and close under a network partition: ``test_outages_partition.py``.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from serverstate import sqlite_write_locked

from asyncbind import AsyncBind, StatementTimeoutError, stopping

GUARD = 30
#: Far above what a short statement takes even on a loaded machine, far below the sleeps.
TIMEOUT = 2.0
SLEEP = {"postgresql": "SELECT pg_sleep(30)", "mysql": "SELECT SLEEP(30)"}
#: The same, with the seconds as a bound parameter (named, as text() takes them).
SLEEP_FOR = {"postgresql": "SELECT pg_sleep(:s)", "mysql": "SELECT SLEEP(:s)"}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def on_slow() -> dict[str, Any]:
    return {"bind_arguments": {"bind_key": "slow"}}


async def slow_db(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> tuple[AsyncBind, list[object]]:
    """An AsyncBind whose bind 'slow' has a statement_timeout; and the list of the connections
    its pool invalidates."""
    db = make_db(
        "sqlite://",
        binds={"slow": {"url": await new_database(server), "statement_timeout": TIMEOUT}},
    )
    invalidated: list[object] = []
    sa.event.listen(
        db.engines["slow"].sync_engine, "invalidate", lambda *args: invalidated.append(args)
    )
    return db, invalidated


def assert_timed_out(error: StatementTimeoutError, what: str) -> None:
    assert error.bind_key == "slow" and error.timeout == TIMEOUT
    assert isinstance(error, TimeoutError)
    assert f"Bind 'slow': {what} took longer than its statement_timeout of 2s" in str(error)
    assert "Roll the session back and retry" in str(error)


async def assert_recovers(db: AsyncBind) -> None:
    async with db.session() as session:
        result = await session.execute(sa.text("SELECT 42"), **on_slow())
        assert result.scalar() == 42
    await stopping.settle(db.engines.values())  # the statement given up on, ended on its server
    assert db.engines["slow"].sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_statement_timeout_names_the_bind_and_the_bind_recovers(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db, invalidated = await slow_db(server, new_database, make_db)
    async with db.session() as session:
        async with asyncio.timeout(GUARD):
            with pytest.raises(StatementTimeoutError) as info:
                await session.execute(sa.text(SLEEP[server]), **on_slow())
        assert_timed_out(info.value, "a statement")
        await session.rollback()
        result = await session.execute(sa.text("SELECT 42"), **on_slow())
        assert result.scalar() == 42
    assert len(invalidated) == 1
    await stopping.settle(db.engines.values())
    assert db.engines["slow"].sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["execute", "executemany", "no-parameters"])
async def test_every_way_a_statement_is_sent_is_bounded(
    server: str, path: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A statement with parameters, several parameter sets at once (executemany) and one sent
    with no parameters at all: each is a cursor call of its own in SQLAlchemy."""
    db, invalidated = await slow_db(server, new_database, make_db)
    sent: list[tuple[bool, bool]] = []

    def record(_conn: Any, _cursor: Any, _sql: str, _params: Any, context: Any, many: bool) -> None:
        sent.append((many, bool(context.no_parameters)))

    engine = db.engines["slow"]
    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    async with engine.connect() as conn:
        async with asyncio.timeout(GUARD):
            with pytest.raises(StatementTimeoutError) as info:
                if path == "execute":
                    await conn.execute(sa.text(SLEEP_FOR[server]), {"s": 30})
                elif path == "executemany":
                    await conn.execute(sa.text(SLEEP_FOR[server]), [{"s": 30}, {"s": 30}])
                else:
                    quiet = await conn.execution_options(no_parameters=True)
                    await quiet.exec_driver_sql(SLEEP[server])
        assert_timed_out(info.value, "a statement")
    assert sent == [
        {"execute": (False, False), "executemany": (True, False)}.get(path, (False, True))
    ]
    assert len(invalidated) == 1
    await assert_recovers(db)


def hang_forever(monkeypatch: pytest.MonkeyPatch, server: str, what: str) -> None:
    """Make the driver's commit or rollback wait for an answer that never comes, as from a
    server that stopped answering."""

    async def never_answered(*_args: Any, **_kwargs: Any) -> None:
        await asyncio.Event().wait()

    if server == "postgresql":
        import asyncpg

        monkeypatch.setattr(asyncpg.transaction.Transaction, what, never_answered)
    else:
        import aiomysql

        monkeypatch.setattr(aiomysql.Connection, what, never_answered)


@pytest.mark.parametrize("what", ["commit", "rollback"])
async def test_a_commit_or_rollback_the_server_never_answers_is_abandoned(
    server: str,
    what: str,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, invalidated = await slow_db(server, new_database, make_db)
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"), **on_slow())
        hang_forever(monkeypatch, server, what)
        async with asyncio.timeout(GUARD):
            with pytest.raises(StatementTimeoutError) as info:
                await getattr(session, what)()
        monkeypatch.undo()
        assert_timed_out(info.value, f"a {what}")
        assert len(invalidated) == 1
        await session.rollback()
        result = await session.execute(sa.text("SELECT 7"), **on_slow())
        assert result.scalar() == 7
    await assert_recovers(db)


@pytest.mark.postgresql
async def test_a_commit_the_server_takes_too_long_over_is_abandoned(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A deferred trigger makes PostgreSQL's COMMIT itself slow."""
    url = await new_database("postgresql")
    setup = make_db(url)
    async with setup.engine.begin() as conn:
        for sql in (
            "CREATE TABLE items (id INTEGER PRIMARY KEY)",
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$",
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON items "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow()",
        ):
            await conn.execute(sa.text(sql))
    db = make_db("sqlite://", binds={"slow": {"url": url, "statement_timeout": TIMEOUT}})
    async with db.session() as session:
        await session.execute(sa.text("INSERT INTO items (id) VALUES (1)"), **on_slow())
        async with asyncio.timeout(GUARD):
            with pytest.raises(StatementTimeoutError) as info:
                await session.commit()
        assert_timed_out(info.value, "a commit")
        await session.rollback()
    await assert_recovers(db)


@pytest.mark.sqlite
async def test_a_sqlite_statement_past_its_timeout_is_interrupted(
    tmp_path: Path, make_db: Callable[..., AsyncBind]
) -> None:
    """aiosqlite runs a statement in a thread of its own: past the timeout it is interrupted and
    rolled back, not left to write its fifty million rows (a minute) before the error comes."""
    path = tmp_path / "long.sqlite"
    db = make_db({"url": f"sqlite:///{path}", "statement_timeout": TIMEOUT})
    t = db.Table("t", sa.Column("x", sa.Integer))
    await db.create_all()
    async with db.session() as session:
        async with asyncio.timeout(GUARD):
            with pytest.raises(StatementTimeoutError) as info:
                await session.execute(
                    sa.text(
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                        "WHERE x < 50000000) INSERT INTO t SELECT x FROM c"
                    )
                )
        assert info.value.bind_key is None and info.value.timeout == TIMEOUT
        await session.rollback()
    assert not sqlite_write_locked(path)
    async with db.engine.begin() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM t")) == 0  # never completed
        await conn.execute(t.insert(), {"x": 1})  # the file is writable
    assert db.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.sqlite
async def test_a_statement_past_its_timeout_keeps_an_in_memory_database(
    make_db: Callable[..., AsyncBind],
) -> None:
    """An in-memory database's one connection is the database: a statement past the bind's
    ``statement_timeout`` is given up on, and the connection, the tables and their rows stay.
    The statement runs on in aiosqlite's thread; what comes next waits for it."""
    db = make_db({"url": "sqlite://", "statement_timeout": 0.05})
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO t (id) VALUES (1)"))
    dropped: list[object] = []
    sa.event.listen(db.engine.sync_engine, "invalidate", lambda *args: dropped.append(args))
    long = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) "
        "SELECT count(*) FROM n"
    )
    async with asyncio.timeout(GUARD):
        async with db.session() as session:
            with pytest.raises(StatementTimeoutError):
                await session.execute(sa.text(long))
            await session.rollback()
        async with db.session() as session:
            assert (await session.execute(sa.text("SELECT id FROM t"))).scalars().all() == [1]
    assert dropped == []
