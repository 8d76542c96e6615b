"""Query recording: Flask-SQLAlchemy 3.1's ``SQLALCHEMY_RECORD_QUERIES`` and
``get_recorded_queries()`` (its tests/test_record_queries.py), per request or scope, on SQLite,
PostgreSQL and MariaDB. In requests of real apps: test_views_frameworks.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm as sa_orm

from asyncbind import AsyncBind, ConfigError, QueryInfo, get_recorded_queries
from asyncbind.recording import _finished, _started


class Models:
    """``Example`` in the default bind, ``Note`` in the ``"notes"`` bind."""

    def __init__(self, db: AsyncBind) -> None:
        self.db = db

        class Example(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "example"
            id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)

        class Note(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "note"
            __bind_key__ = "notes"
            id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)

        self.Example, self.Note = Example, Note


def listening(db: AsyncBind) -> list[bool]:
    """Whether each engine of ``db`` has the recording listeners."""
    return [
        sa.event.contains(engine.sync_engine, "before_cursor_execute", _started)
        and sa.event.contains(engine.sync_engine, "after_cursor_execute", _finished)
        for engine in db.engines.values()
    ]


@pytest.fixture
async def models(backend: str, new_database: Any, make_db: Callable[..., AsyncBind]) -> Models:
    db = make_db(
        await new_database(backend),
        binds={"notes": await new_database(backend)},
        record_queries=True,
    )
    models = Models(db)
    await db.create_all()
    return models


async def test_query_info(models: Models) -> None:
    """Flask-SQLAlchemy ``test_query_info``: the statement, its parameters, its timing and the
    line of the caller's code that ran it; here also its bind."""
    db, Example = models.db, models.Example
    async with db.scope():
        await db.session.execute(sa.select(Example).filter(Example.id < 5))
        info = get_recorded_queries()[-1]
    assert isinstance(info, QueryInfo)
    assert info.statement is not None
    assert "SELECT" in info.statement and "FROM example" in info.statement
    assert info.parameters[0][0] == 5
    assert info.duration == info.end_time - info.start_time >= 0
    assert "tests/test_recording.py:" in info.location
    assert "(test_query_info)" in info.location
    assert info.bind_key is None


async def test_each_statement_is_recorded_with_its_bind_and_where_it_ran(models: Models) -> None:
    db, Example, Note = models.db, models.Example, models.Note

    async def add_note() -> None:
        db.session.add(Note(id=7))
        await db.session.commit()  # the INSERT runs in the flush of this commit

    async with db.scope():
        await add_note()
        await db.session.get(Example, 1)
        await db.paginate(sa.select(Note).order_by(Note.id))
        queries = get_recorded_queries()
    assert [q.bind_key for q in queries] == ["notes", None, "notes", "notes"]
    insert, get, page, count = queries
    assert "INSERT INTO note" in (insert.statement or "")
    assert "(add_note)" in insert.location
    assert "(test_each_statement_is_recorded_with_its_bind_and_where_it_ran)" in get.location
    # paginate() runs in asyncbind: the caller's line is where it was awaited.
    assert page.location == count.location and page.location.endswith(
        "(test_each_statement_is_recorded_with_its_bind_and_where_it_ran)"
    )
    assert "count(*)" in (count.statement or "").lower()
    assert all(q.start_time <= q.end_time for q in queries)
    assert [q.start_time for q in queries] == sorted(q.start_time for q in queries)


async def test_each_scope_has_its_own_list_and_nothing_outside_is_kept(models: Models) -> None:
    """Flask-SQLAlchemy keeps the list in ``g``, one per app context; here one per request or
    scope, and none outside them: a long-lived worker does not collect queries forever."""
    db, Example, Note = models.db, models.Example, models.Note
    async with db.session() as session:  # outside every scope: not recorded
        await session.execute(sa.select(Example))
        assert get_recorded_queries() == []

    async def task(model: Any, times: int) -> list[QueryInfo]:
        async with db.scope():
            for _ in range(times):
                await db.session.execute(sa.select(model))
                await asyncio.sleep(0)
            return get_recorded_queries()

    async with asyncio.timeout(30):
        examples, notes = await asyncio.gather(task(Example, 3), task(Note, 2))
    assert [q.bind_key for q in examples] == [None] * 3
    assert [q.bind_key for q in notes] == ["notes"] * 2

    async with db.scope():
        await db.session.execute(sa.select(Example))
        async with db.scope():  # a scope inside a scope records into the outer one's list
            await db.session.execute(sa.select(Note))
            async with db.session() as own:  # so does a session of one's own in a scope
                await own.execute(sa.select(Note))
        inner_and_outer = get_recorded_queries()
    assert [q.bind_key for q in inner_and_outer] == [None, "notes", "notes"]
    assert get_recorded_queries() == []


async def test_off_by_default_with_no_listener_installed(
    backend: str, new_database: Any, make_db: Callable[..., AsyncBind]
) -> None:
    """Flask-SQLAlchemy 3.0: "Not enabled automatically"; and off, nothing is installed."""
    db = make_db(await new_database(backend))
    assert db.record_queries is False and listening(db) == [False]
    async with db.scope():
        await db.session.execute(sa.text("SELECT 1"))
        assert get_recorded_queries() == []


def test_config_key_turns_it_on() -> None:
    """``SQLALCHEMY_RECORD_QUERIES`` read by ``from_config``, as Flask-SQLAlchemy reads it."""
    config = {"SQLALCHEMY_DATABASE_URI": "sqlite://", "SQLALCHEMY_BINDS": {"a": "sqlite://"}}
    on = AsyncBind.from_config({**config, "SQLALCHEMY_RECORD_QUERIES": True})
    assert on.record_queries is True and listening(on) == [True, True]
    off = AsyncBind.from_config({**config, "SQLALCHEMY_RECORD_QUERIES": False})
    assert off.record_queries is False and listening(off) == [False, False]
    either = AsyncBind.from_config(config, record_queries=True)
    assert either.record_queries is True and listening(either) == [True, True]


def test_engines_configured_later_record_too() -> None:
    db = AsyncBind(record_queries=True)
    db.configure("sqlite://", binds={"a": "sqlite://"})
    assert listening(db) == [True, True]


@pytest.mark.parametrize("value", ["yes", 1])
def test_a_flag_that_is_not_a_bool_is_refused(value: Any) -> None:
    config = {"SQLALCHEMY_DATABASE_URI": "sqlite://", "SQLALCHEMY_RECORD_QUERIES": value}
    with pytest.raises(ConfigError, match=f"'SQLALCHEMY_RECORD_QUERIES' is {value!r}"):
        AsyncBind.from_config(config)
    with pytest.raises(ConfigError, match=f"record_queries= is {value!r}"):
        AsyncBind("sqlite://", record_queries=value)
