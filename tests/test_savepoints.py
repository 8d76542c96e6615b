"""SQLite savepoints inside the transaction (``asyncbind.savepoints``): a released savepoint is
undone by the rollback of the transaction around it, in a file and in memory, beside real
PostgreSQL and MariaDB binds, in the rolled-back tests' sessions too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy import orm as sa_orm

from asyncbind import AsyncBind
from asyncbind.testing import rolled_back

pytestmark = pytest.mark.sqlite


@pytest.fixture(params=["file", "memory"])
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite database in a file, or in memory (one connection, shared by every session)."""
    return f"sqlite:///{tmp_path / 'main.sqlite'}" if request.param == "file" else "sqlite://"


def note_model(db: AsyncBind) -> Any:
    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "notes"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True, autoincrement=False)

    return Note


async def ids(db: AsyncBind, table: str, key: str | None = None) -> list[int]:
    """The ids in ``table`` of bind ``key``, read on a connection of the engine's."""
    async with db.engines[key].connect() as conn:
        return list(await conn.scalars(sa.text(f"SELECT id FROM {table} ORDER BY id")))


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_a_released_savepoint_is_rolled_back_with_the_other_binds(
    sqlite_url: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """PostgreSQL and MariaDB written first, then a savepoint whose SAVEPOINT is the first
    statement on the SQLite connection, released: the session's rollback undoes all three."""
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    db = make_db(sqlite_url, binds={"pg": postgresql, "my": mysql})
    Note = note_model(db)

    class User(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "pg"
        __tablename__ = "users"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True, autoincrement=False)

    class Order(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "my"
        __tablename__ = "orders"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True, autoincrement=False)

    await db.create_all()
    async with db.session() as session:
        session.add_all([User(id=1), Order(id=1)])
        await session.flush()
        savepoint = await session.begin_nested()
        session.add(Note(id=1))
        await session.flush()
        await savepoint.commit()  # RELEASE SAVEPOINT
        await session.rollback()
    assert await ids(db, "notes") == []
    assert await ids(db, "users", "pg") == []
    assert await ids(db, "orders", "my") == []


@pytest.mark.parametrize("before", ["nothing", "a read"])
async def test_a_released_savepoint_is_rolled_back(
    sqlite_url: str, before: str, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(sqlite_url)
    Note = note_model(db)
    await db.create_all()
    async with db.session() as session:
        if before == "a read":
            assert await session.scalar(sa.select(Note.id)) is None
        async with session.begin_nested():
            session.add(Note(id=1))
        await session.rollback()
    assert await ids(db, "notes") == []


async def test_a_savepoint_rolled_back_inside_a_committed_transaction(
    sqlite_url: str, tmp_path: Path, make_db: Callable[..., AsyncBind]
) -> None:
    """One savepoint released, one rolled back, a write outside both: the commit keeps the first
    and the last, and nothing is seen from elsewhere before it."""
    db = make_db(sqlite_url)
    Note = note_model(db)
    await db.create_all()
    async with db.session() as session:
        async with session.begin_nested():
            session.add(Note(id=1))
        savepoint = await session.begin_nested()
        session.add(Note(id=2))
        await savepoint.rollback()
        session.add(Note(id=3))
        await session.flush()
        if sqlite_url != "sqlite://":  # in memory, every connection is the session's
            assert await ids(make_db(sqlite_url), "notes") == []
        await session.commit()
    assert await ids(db, "notes") == [1, 3]


@pytest.mark.parametrize("end", ["commit", "rollback"])
async def test_nested_savepoints(
    sqlite_url: str, end: str, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(sqlite_url)
    Note = note_model(db)
    await db.create_all()
    async with db.session() as session:
        async with session.begin_nested():
            session.add(Note(id=1))
            inner = await session.begin_nested()
            session.add(Note(id=2))
            await inner.rollback()
            async with session.begin_nested():
                session.add(Note(id=3))
                async with session.begin_nested():
                    session.add(Note(id=4))
        await (session.commit() if end == "commit" else session.rollback())
    assert await ids(db, "notes") == ([1, 3, 4] if end == "commit" else [])


async def test_a_session_joining_a_connection_with_create_savepoint(
    sqlite_url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """The README's recipe for tests that roll back, with no BEGIN of the caller's: the
    session's commit releases its savepoint, the caller's rollback undoes it."""
    db = make_db(sqlite_url)
    Note = note_model(db)
    await db.create_all()
    async with db.engine.connect() as conn:
        outer = await conn.begin()
        async with db.session(binds={None: conn}, join_transaction_mode="create_savepoint") as s:
            s.add(Note(id=1))
            await s.commit()
            async with s.begin_nested():
                s.add(Note(id=2))
            await s.commit()
        await outer.rollback()
    assert await ids(db, "notes") == []


async def test_rolled_back_sessions_with_savepoints_of_their_own(
    sqlite_url: str, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(sqlite_url)
    Note = note_model(db)
    await db.create_all()
    async with rolled_back(db):
        async with db.session() as session:
            async with session.begin_nested():
                session.add(Note(id=1))
                async with session.begin_nested():
                    session.add(Note(id=2))
            await session.commit()
        async with db.session() as session:
            async with session.begin_nested():
                session.add(Note(id=3))
            await session.rollback()
            assert list(await session.scalars(sa.select(Note.id).order_by(Note.id))) == [1, 2]
    assert await ids(db, "notes") == []


async def test_a_transaction_without_savepoints_begins_at_its_first_write(
    sqlite_url: str, make_db: Callable[..., AsyncBind], statements: Callable[..., Any]
) -> None:
    """No BEGIN is sent where the driver begins the transaction itself: its locks are taken as
    before."""
    db = make_db(sqlite_url)
    Note = note_model(db)
    await db.create_all()
    log = statements(db)
    async with db.session() as session:
        await session.scalar(sa.select(Note.id))
        session.add(Note(id=1))
        await session.commit()
        session.add(Note(id=2))
        await session.flush()
        async with session.begin_nested():
            session.add(Note(id=3))
        await session.commit()
    assert [sql for _, sql in log if sql == "BEGIN"] == []
    assert await ids(db, "notes") == [1, 2, 3]
