"""Binds added and removed while the application runs: ``db.add_bind()`` and ``db.remove_bind()``.

Rows are checked in the databases themselves, read on connections of their own; connections are
counted by the engines' pool events and, on PostgreSQL and MariaDB, by the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from serverconns import OpenConnections, no_server_connections, read_rows, table_names
from sqlalchemy import orm as sa_orm

from asyncbind import AsyncBind, ConfigError, UnknownBindError


@dataclass
class App:
    db: AsyncBind
    Item: Any  # default bind
    Note: Any  # bind "extra", added at run time


def make_app(db: AsyncBind) -> App:
    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "items"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "notes"
        __bind_key__ = "extra"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        text: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

    return App(db, Item, Note)


@pytest.fixture
async def app(url: str, make_db: Callable[..., AsyncBind]) -> App:
    made = make_app(make_db(url))
    # Only the default bind's tables: create_all() refuses models of a bind not configured yet.
    await made.db.create_all(bind_key=None)
    return made


async def notes_in(url: str) -> list[str]:
    return [row[0] for row in await read_rows(url, "SELECT text FROM notes ORDER BY text")]


async def add_extra_bind(
    db: AsyncBind, backend: str, new_database: NewDatabase
) -> tuple[str, OpenConnections]:
    """A new database on ``backend`` added as bind "extra" with its tables; its URL, and what
    counts the connections its engine opens and closes."""
    extra = await new_database(backend)
    await db.add_bind("extra", extra)
    connections = OpenConnections(db.get_engine("extra"))
    await db.create_all(bind_key="extra")
    return extra, connections


async def test_add_bind_routes_and_creates_its_tables(
    app: App, backend: str, new_database: NewDatabase, url: str
) -> None:
    extra = await new_database(backend)
    await app.db.add_bind("extra", extra)
    await app.db.create_all(bind_key="extra")
    async with app.db.session() as session:
        session.add(app.Note(text="first"))
        session.add(app.Item(name="item"))
        await session.commit()
        assert (await session.scalars(sa.select(app.Note.text))).all() == ["first"]
    assert await notes_in(extra) == ["first"]
    assert await read_rows(url, "SELECT name FROM items") == [("item",)]
    assert await table_names(extra) == {"notes"}  # none of the default bind's


async def test_add_bind_takes_a_dict_with_engine_options(
    make_db: Callable[..., AsyncBind], tmp_path: Any
) -> None:
    db = make_db(f"sqlite:///{tmp_path / 'main.db'}", engine_options={"pool_size": 3})
    await db.add_bind("extra", {"url": f"sqlite:///{tmp_path / 'extra.db'}", "max_overflow": 1})
    assert dict(db.bind_configs["extra"].engine_options) == {"pool_size": 3, "max_overflow": 1}
    async with db.get_engine("extra").connect() as conn:
        assert (await conn.execute(sa.text("SELECT 1"))).scalar_one() == 1


@pytest.mark.sqlite
async def test_a_bind_added_with_replicas_reads_from_them_and_is_removed_with_them(
    make_db: Callable[..., AsyncBind], tmp_path: Any
) -> None:
    """add_bind() takes a bind's replicas with it; remove_bind() disposes their engines too."""
    db = make_db(f"sqlite:///{tmp_path / 'main.db'}")
    files = {name: tmp_path / f"{name}.db" for name in ("primary", "replica")}
    for name, path in files.items():  # a replica that says which file it is
        async with make_db(f"sqlite:///{path}").engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE source (name TEXT)"))
            await conn.execute(sa.text(f"INSERT INTO source VALUES ('{name}')"))
    await db.add_bind(
        "extra",
        {"url": f"sqlite:///{files['primary']}", "replicas": [f"sqlite:///{files['replica']}"]},
    )
    source = db.Table("source", sa.Column("name", sa.Text), bind_key="extra")
    async with db.session() as session:
        assert (await session.scalars(sa.select(source.c.name))).all() == ["replica"]
    (replica,) = db.replica_engines["extra"]
    opened = replica.pool.checkedin()  # type: ignore[attr-defined]
    assert opened == 1
    await db.remove_bind("extra")
    assert "extra" not in db.replica_engines
    # Disposed: the replica's pooled connection is closed, and its pool holds none.
    assert replica.pool.checkedin() == 0  # type: ignore[attr-defined]
    with pytest.raises(UnknownBindError):
        async with db.session() as session:
            await session.execute(sa.select(source.c.name))


async def test_add_and_remove_bind_refuse_what_is_wrong(
    make_db: Callable[..., AsyncBind], tmp_path: Any
) -> None:
    db = make_db(f"sqlite:///{tmp_path / 'main.db'}", binds={"users": "sqlite://"})
    db.add_group("tenant", url=lambda tenant: f"sqlite:///{tmp_path / tenant}.db")

    with pytest.raises(ConfigError, match="bind 'users' is configured already") as info:
        await db.add_bind("users", "postgresql://u:s3cret@127.0.0.1/users")
    assert "remove_bind('users')" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="the default bind is configured already"):
        await db.add_bind(None, "sqlite://")
    with pytest.raises(ConfigError, match="'tenant' is a tenant group already"):
        await db.add_bind("tenant", "sqlite://")
    with pytest.raises(ConfigError, match="has no 'url'") as info:
        await db.add_bind("extra", {"pool_size": 2})
    assert "'extra'" in str(info.value)
    with pytest.raises(ConfigError, match="reserved"):
        await db.add_bind("__all__", "sqlite://")
    assert set(db.engines) == {None, "users"}  # nothing half-added

    with pytest.raises(UnknownBindError, match=r"'nope' used by remove_bind\(\)") as error:
        await db.remove_bind("nope")
    assert error.value.configured == (None, "users")
    with pytest.raises(ConfigError, match="the default bind cannot be removed"):
        await db.remove_bind(None)
    with pytest.raises(ConfigError, match="'tenant' is a tenant group"):
        await db.remove_bind("tenant")
    assert set(db.engines) == {None, "users"}


async def test_remove_bind_refuses_new_statements_and_routes_a_new_bind_by_that_key(
    app: App, backend: str, new_database: NewDatabase
) -> None:
    db, Note = app.db, app.Note
    first, second = await new_database(backend), await new_database(backend)
    await db.add_bind("extra", first)
    await db.create_all(bind_key="extra")
    statement = sa.select(Note.text)
    core = sa.select(Note.__table__.c.text)
    async with db.session() as session:  # the router caches these shapes and the mapper
        await session.execute(statement)
        await session.execute(core)
        await session.get(Note, 1)

    await db.remove_bind("extra")
    assert "extra" not in db.engines
    async with db.session() as session:
        for attempt in (session.execute(statement), session.execute(core), session.get(Note, 1)):
            with pytest.raises(UnknownBindError, match="'extra'"):
                await attempt
        session.add(Note(text="nowhere"))
        with pytest.raises(UnknownBindError, match="model 'Note'"):
            await session.flush()

    await db.add_bind("extra", second)
    await db.create_all(bind_key="extra")
    async with db.session() as session:
        session.add(Note(text="second"))
        await session.commit()
        assert (await session.execute(statement)).scalars().all() == ["second"]
    assert await notes_in(first) == []
    assert await notes_in(second) == ["second"]


async def test_remove_bind_waits_for_the_sessions_using_it(
    app: App, backend: str, new_database: NewDatabase
) -> None:
    db, Note = app.db, app.Note
    extra, connections = await add_extra_bind(db, backend, new_database)

    async with db.session() as busy:
        busy.add(Note(text="in flight"))
        await busy.flush()  # holds a connection of "extra", mid-transaction
        removing = asyncio.create_task(db.remove_bind("extra"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not removing.done()  # its session still holds a connection
        assert "extra" not in db.engines  # but no new work reaches it
        async with db.session() as other:
            with pytest.raises(UnknownBindError):
                await other.execute(sa.select(Note))
        await busy.commit()  # the session in flight finishes undisturbed
    await asyncio.wait_for(removing, 30)
    assert connections.opened >= 1 and connections.open == 0
    assert await notes_in(extra) == ["in flight"]
    assert await no_server_connections(extra) == 0


async def test_remove_bind_returns_when_the_last_connection_back_is_an_overflow_one(
    app: App, backend: str, new_database: NewDatabase
) -> None:
    """The pool keeps one connection; the second session's is an overflow one, which the pool
    closes as it takes it back (over the network on PostgreSQL and SQLite), after its checkin
    event. remove_bind() still sees that the last connection is back."""
    db, Note = app.db, app.Note
    extra = await new_database(backend)
    await db.add_bind("extra", {"url": extra, "pool_size": 1, "max_overflow": 1})
    connections = OpenConnections(db.get_engine("extra"))
    await db.create_all(bind_key="extra")
    async with db.session() as first, db.session() as second:
        for session in (first, second):
            await session.execute(sa.select(Note))
        assert connections.open == 2
        removing = asyncio.create_task(db.remove_bind("extra"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not removing.done()
        await first.close()  # kept by the pool
        await second.close()  # the overflow one: closed as it comes back
    await asyncio.wait_for(removing, 30)
    assert connections.opened == 2 and connections.open == 0
    assert await no_server_connections(extra) == 0


async def test_remove_bind_under_more_requests_than_its_pool_keeps(
    app: App, backend: str, new_database: NewDatabase
) -> None:
    """Eight requests at once on a bind whose pool keeps two connections: as they stop, the pool
    closes the overflow connections they return. remove_bind() returns once the last request is
    done, and every connection of the bind is closed."""
    db, Note = app.db, app.Note
    extra = await new_database(backend)
    await db.add_bind("extra", {"url": extra, "pool_size": 2, "max_overflow": 6})
    connections = OpenConnections(db.get_engine("extra"))
    await db.create_all(bind_key="extra")
    served = 0

    async def request() -> None:
        nonlocal served
        while True:
            try:
                async with db.session() as session:
                    await session.execute(sa.select(Note))
                    await asyncio.sleep(0)  # the others take connections meanwhile
                    await session.execute(sa.select(Note.id))
                    await session.commit()
            except UnknownBindError:
                return  # removed: refused before anything was sent
            served += 1

    requests = [asyncio.create_task(request()) for _ in range(8)]
    for _ in range(6_000):  # until overflow connections are in use (a guard of ~60 s)
        if served >= 40 and connections.opened > 2:
            break
        await asyncio.sleep(0.01)
    assert connections.opened > 2
    # As the requests stop, the pool closes what it does not keep: overflow connections.
    await asyncio.wait_for(db.remove_bind("extra"), 60)
    await asyncio.wait_for(asyncio.gather(*requests), 60)
    assert connections.closed > 2 and connections.open == 0
    assert await no_server_connections(extra) == 0


async def test_a_session_in_a_transaction_finishes_it_on_the_removed_bind(
    app: App, backend: str, new_database: NewDatabase
) -> None:
    """remove_bind() while a session has written to the bind and not committed: that session
    goes on writing, reading and commits there, while other sessions are refused; its next
    transaction is refused too."""
    db, Note = app.db, app.Note
    extra, connections = await add_extra_bind(db, backend, new_database)
    async with db.session() as busy:
        busy.add(Note(text="first"))
        await busy.flush()
        removing = asyncio.create_task(db.remove_bind("extra"))
        for _ in range(20):
            await asyncio.sleep(0)
        async with db.session() as other:
            with pytest.raises(UnknownBindError, match="'extra'"):
                await other.execute(sa.select(Note))
        busy.add(Note(text="second"))
        await busy.flush()
        written = await busy.scalars(sa.select(Note.text).order_by(Note.text))
        assert written.all() == ["first", "second"]
        count = sa.text("SELECT count(*) FROM notes")
        assert (await busy.scalar(count, bind_arguments={"bind_key": "extra"})) == 2
        assert not removing.done()
        await busy.commit()
        busy.add(Note(text="next transaction"))
        with pytest.raises(UnknownBindError, match="model 'Note'"):
            await busy.flush()
        await busy.rollback()
    await asyncio.wait_for(removing, 30)
    assert await notes_in(extra) == ["first", "second"]
    assert connections.open == 0


async def test_a_key_added_again_never_splits_a_transaction_across_two_databases(
    backend_pair: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """Bind "extra" is removed and added again with a database on another server while a
    session has written to the first one and not committed: that session's transaction goes on
    in the first database to its end. Other sessions, and its own next transaction, use the
    second."""
    old_backend, new_backend = backend_pair
    app = make_app(make_db(await new_database(old_backend)))
    db, Note = app.db, app.Note
    first, second = await new_database(old_backend), await new_database(new_backend)
    await db.add_bind("extra", first)
    await db.create_all(bind_key="extra")
    async with db.session() as busy:
        busy.add(Note(text="busy 1"))
        await busy.flush()
        removing = asyncio.create_task(db.remove_bind("extra"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert "extra" not in db.engines
        await db.add_bind("extra", second)
        await db.create_all(bind_key="extra")
        async with db.session() as other:
            other.add(Note(text="other"))
            await other.commit()
            assert (await other.scalars(sa.select(Note.text))).all() == ["other"]
        busy.add(Note(text="busy 2"))
        await busy.flush()
        written = await busy.scalars(sa.select(Note.text).order_by(Note.text))
        assert written.all() == ["busy 1", "busy 2"]
        assert not removing.done()
        await busy.commit()
        busy.add(Note(text="busy, next transaction"))
        await busy.commit()
    await asyncio.wait_for(removing, 30)
    assert await notes_in(first) == ["busy 1", "busy 2"]
    assert await notes_in(second) == ["busy, next transaction", "other"]
    async with db.session() as session:  # once the first engine is disposed, as any bind
        assert len((await session.scalars(sa.select(Note))).all()) == 2


async def test_remove_bind_cancelled_still_disposes_the_engine(
    app: App, backend: str, new_database: NewDatabase
) -> None:
    db, Note = app.db, app.Note
    extra, connections = await add_extra_bind(db, backend, new_database)
    async with db.session() as busy:
        await busy.execute(sa.select(Note))
        removing = asyncio.create_task(db.remove_bind("extra"))
        await asyncio.sleep(0)
        removing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await removing
        await busy.rollback()
    for _ in range(300):  # the engine is disposed in a task of its own
        if connections.open == 0:
            break
        await asyncio.sleep(0.05)
    assert connections.open == 0
    assert await no_server_connections(extra) == 0


async def test_dispose_ends_a_removal_still_waiting(
    app: App, backend: str, new_database: NewDatabase
) -> None:
    db, Note = app.db, app.Note
    extra, connections = await add_extra_bind(db, backend, new_database)
    removing_engine = db.get_engine("extra").sync_engine
    async with db.session() as busy, db.session() as other:
        await other.execute(sa.select(Note))  # a second connection, idle once this commits
        await busy.execute(sa.select(Note))
        await other.commit()
        removing = asyncio.create_task(db.remove_bind("extra"))
        await asyncio.sleep(0)
        assert not removing.done()
        await db.dispose()  # at shut-down: no more waiting for the session
        await asyncio.wait_for(removing, 30)  # returns, neither cancelled nor failed
        assert connections.open == 1  # the idle ones are closed; the one in use is the session's
        # As with db.dispose() on any bind, a connection in use at the time is left to its user.
        await (await busy.connection(bind_arguments={"bind": removing_engine})).invalidate()
        await busy.rollback()
    assert connections.open == 0
    assert await no_server_connections(extra) == 0


async def test_add_and_remove_under_concurrent_requests(
    app: App, backend: str, new_database: NewDatabase, url: str
) -> None:
    """Requests on the default bind run throughout while bind "extra" is added, used by
    requests of its own, and removed, three times over three databases: no request on the default
    bind fails, every note lands in the database "extra" named when it was written, and each
    removed engine is left with no connection."""
    db, Item, Note = app.db, app.Item, app.Note
    extras = [await new_database(backend) for _ in range(3)]
    stop = asyncio.Event()
    written: list[str] = []

    async def request_on_default(worker: int) -> None:
        count = 0
        while not stop.is_set() or count < 3:
            async with db.session() as session:
                session.add(Item(name=f"w{worker}-{count}"))
                await session.commit()
                written.append(f"w{worker}-{count}")
            count += 1
            await asyncio.sleep(0)

    async def request_on_extra(round_: int, worker: int, landed: list[str]) -> list[str]:
        for count in range(100_000):
            text = f"r{round_}-w{worker}-{count}"
            try:
                async with db.session() as session:
                    session.add(Note(text=text))
                    await session.commit()
            except UnknownBindError:
                return landed  # removed: refused before anything was sent
            landed.append(text)
            await asyncio.sleep(0)
        return landed

    workers = [asyncio.create_task(request_on_default(w)) for w in range(6)]
    landed_by_round: list[list[str]] = []
    counters = []
    for round_, extra in enumerate(extras):
        await db.add_bind("extra", extra)
        counters.append(OpenConnections(db.get_engine("extra")))
        await db.create_all(bind_key="extra")
        landed: list[str] = []
        requests = [asyncio.create_task(request_on_extra(round_, w, landed)) for w in range(4)]
        for _ in range(6_000):  # until a dozen notes landed (a guard of ~60 s)
            if len(landed) >= 12:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(db.remove_bind("extra"), 60)
        await asyncio.wait_for(asyncio.gather(*requests), 60)
        landed_by_round.append(sorted(landed))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), 120)

    items = sorted(row[0] for row in await read_rows(url, "SELECT name FROM items"))
    assert items == sorted(written) and len(items) >= 18
    for extra, landed, counter in zip(extras, landed_by_round, counters, strict=True):
        assert landed  # requests did reach each bind while it was there
        assert await notes_in(extra) == sorted(landed)
        assert counter.open == 0
        assert await no_server_connections(extra) == 0
