"""PgBouncer in transaction pooling mode, started by this module on port 25530 in front of the
shared PostgreSQL server, with two server connections that every client connection shares: a bind
with ``"pgbouncer": True`` works through it under concurrent sessions; without it, asyncpg's named
prepared statements collide."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import POSTGRESQL_URL, NewDatabase
from privateservers import PgBouncerServer, ServerNotInstalledError
from replication import wait_until
from sqlalchemy.orm import Mapped, mapped_column
from test_stopping import GUARD, new_tag, running, sleeping, until_stopped

from asyncbind import AsyncBind, ConfigError
from asyncbind.engines import engine_arguments
from asyncbind.pgbouncer import unique_statement_name

pytestmark = pytest.mark.postgresql

PORT = 25530
MakeDb = Callable[..., AsyncBind]


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncerServer]:
    try:
        server = PgBouncerServer(PORT, target=POSTGRESQL_URL)
    except ServerNotInstalledError as exc:
        pytest.skip(str(exc))
    with server:
        yield server


async def through(bouncer: PgBouncerServer, new_database: NewDatabase) -> sa.URL:
    """A new database on the shared server, and its URL through PgBouncer."""
    direct = sa.make_url(await new_database("postgresql"))
    return bouncer.url(direct.database)


def add_models(db: AsyncBind) -> Any:
    class Note(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True)
        task: Mapped[int]
        text: Mapped[str] = mapped_column(sa.String(50))

    return Note


async def test_sessions_work_through_pgbouncer(
    bouncer: PgBouncerServer, new_database: NewDatabase, make_db: MakeDb
) -> None:
    url = await through(bouncer, new_database)
    db = make_db({"url": url, "pgbouncer": True, "pool_size": 10})
    Note = add_models(db)
    await db.create_all()

    async def work(task: int) -> None:
        for step in range(10):
            async with db.session() as session:
                session.add(Note(task=task, text=f"{task}-{step}"))
                await session.commit()
                found = await session.scalars(sa.select(Note.text).where(Note.task == task))
                assert len(found.all()) == step + 1

    # 20 client connections' transactions take turns on PgBouncer's 2 server connections.
    async with asyncio.TaskGroup() as group:
        for task in range(20):
            group.create_task(work(task))
    async with db.session() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Note)) == 200
        statements = (
            await session.execute(sa.text("SELECT count(*) FROM pg_prepared_statements"))
        ).scalar()
        assert statements is not None


async def switch_server_connection(db: AsyncBind) -> None:
    """Run one statement in two transactions of one client connection that PgBouncer gives two
    different server connections: between them, another client holds the first one."""
    query = sa.text("SELECT count(*) FROM pg_class WHERE relname = :name")
    async with db.engine.connect() as first:
        await first.execute(query, {"name": "a"})  # prepared on server connection 1
        await first.commit()
        async with db.engine.connect() as second:
            await second.execute(sa.text("SELECT 1"))  # takes server connection 1, and keeps it
            await first.execute(query, {"name": "b"})  # on server connection 2
            await first.commit()
            await second.commit()


async def test_a_connection_moves_between_server_connections(
    bouncer: PgBouncerServer, new_database: NewDatabase, make_db: MakeDb
) -> None:
    url = await through(bouncer, new_database)
    await switch_server_connection(make_db({"url": url, "pgbouncer": True}))


async def test_without_the_option_prepared_statements_go_missing(
    bouncer: PgBouncerServer, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """What the option prevents: a statement prepared (and cached by name) on one server
    connection is looked for on another."""
    url = await through(bouncer, new_database)
    with pytest.raises(sa.exc.DBAPIError, match=r"prepared statement .* does not exist"):
        await switch_server_connection(make_db(url))


def test_the_option_sets_asyncpg_up() -> None:
    db = AsyncBind({"url": "postgresql://app@pgbouncer/app", "pgbouncer": True})
    _, options = engine_arguments(db.bind_configs[None])
    args = options["connect_args"]
    assert args["statement_cache_size"] == 0
    assert args["prepared_statement_cache_size"] == 0
    assert args["prepared_statement_name_func"] is unique_statement_name
    assert unique_statement_name() != unique_statement_name()
    assert "pgbouncer=True" in repr(db.bind_configs[None])


async def test_a_cancelled_statement_behind_pgbouncer_stops_on_the_server(
    bouncer: PgBouncerServer, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """Behind PgBouncer asyncbind ends no server connection itself; the connection of a
    cancelled statement is closed politely, which lets asyncpg's cancel request (PgBouncer
    forwards it) reach the server, which stops the statement."""
    db = make_db({"url": await through(bouncer, new_database), "pgbouncer": True})
    tag = new_tag()

    async def sleep() -> None:
        async with db.session() as session:
            await session.execute(sleeping("postgresql", tag))

    task = asyncio.create_task(sleep())

    async def started() -> bool:
        return await running("postgresql", tag) == 1

    await wait_until(started, "the statement started", guard=GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_stopped("postgresql", tag)  # long before its 120 s
    await db.dispose()
    assert db.pool_status()[None].checked_out == 0


def test_behind_pgbouncer_an_invalidated_connection_is_closed_politely() -> None:
    """Nothing ends an abandoned statement's server connection behind PgBouncer (its connection
    ids are not the server's): SQLAlchemy's polite terminate stays, which lets asyncpg's cancel
    request, forwarded by PgBouncer, go out. Elsewhere the connection is dropped at once."""
    db = AsyncBind(
        {"url": "postgresql://app@pgbouncer/app", "pgbouncer": True},
        binds={"direct": "postgresql://app@server/app"},
    )
    replaced = {key: vars(engine.sync_engine.dialect) for key, engine in db.engines.items()}
    assert "do_terminate" not in replaced[None]
    assert "do_terminate" in replaced["direct"]


def test_the_option_keeps_what_the_bind_sets() -> None:
    db = AsyncBind(
        {
            "url": "postgresql://app@pgbouncer/app",
            "pgbouncer": True,
            "connect_args": {"prepared_statement_cache_size": 50},
        }
    )
    _, options = engine_arguments(db.bind_configs[None])
    assert options["connect_args"]["prepared_statement_cache_size"] == 50


def test_the_option_is_for_postgresql() -> None:
    with pytest.raises(ConfigError, match="'pgbouncer' is for PostgreSQL"):
        AsyncBind({"url": "mysql://root@localhost/app", "pgbouncer": True})
    with pytest.raises(ConfigError, match="'pgbouncer' in its options is str"):
        AsyncBind({"url": "postgresql://app@pgbouncer/app", "pgbouncer": "yes"})
