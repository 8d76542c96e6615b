"""Flask-SQLAlchemy 3.1's view helpers, ``get_or_404``, ``first_or_404`` and ``one_or_404``, outside
any web request: on ``db``, on ``db.session`` and on a session of one's own, on SQLite, PostgreSQL
and MariaDB. Outside a request "not found" is ``NotFoundError``; the frameworks' own 404s are in
test_views_frameworks.py.

Each test names the Flask-SQLAlchemy behaviour it mirrors (its tests/test_view_query.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm as sa_orm

from asyncbind import (
    AsyncBind,
    AsyncBindError,
    AsyncBindSession,
    NoCurrentSessionError,
    NotFoundError,
    ViewHelpers,
)


class Models:
    """``Todo`` in the default bind, ``Note`` in the ``"notes"`` bind."""

    def __init__(self, db: AsyncBind) -> None:
        self.db = db

        class Todo(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "todo"
            id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
            title: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

        class Note(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "note"
            __bind_key__ = "notes"
            id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
            title: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

        self.Todo, self.Note = Todo, Note


@pytest.fixture
async def models(backend: str, new_database: Any, make_db: Callable[..., AsyncBind]) -> Models:
    db = make_db(await new_database(backend), binds={"notes": await new_database(backend)})
    models = Models(db)
    await db.create_all()
    async with db.session() as session:
        session.add_all([models.Todo(id=1, title="a"), models.Todo(id=2, title="b")])
        session.add_all([models.Note(id=1, title="x"), models.Note(id=2, title="y")])
        session.add(models.Note(id=3, title="y"))
        await session.commit()
    return models


async def test_get_or_404_on_db_on_db_session_and_on_a_session(models: Models) -> None:
    """``db.get_or_404(Todo, 1)`` returns the object, a missing id is a 404
    (``test_view_get_or_404``): here on ``db``, ``db.session`` and a session of one's own, in
    both binds."""
    db, Todo, Note = models.db, models.Todo, models.Note
    async with db.scope() as current:
        todo = await db.get_or_404(Todo, 1)
        assert todo.title == "a" and todo in current
        assert await db.session.get_or_404(Note, 2) is await current.get(Note, 2)
        with pytest.raises(NotFoundError) as error:
            await db.get_or_404(Todo, 3)
        assert error.value.call == "get_or_404()" and error.value.description is None
        assert "'Todo'" in str(error.value) and "primary key 3" in str(error.value)
        with pytest.raises(NotFoundError, match="'Note' with primary key 9"):
            await db.session.get_or_404(Note, 9)
    async with db.session() as session:
        assert isinstance(session, AsyncBindSession)
        assert (await session.get_or_404(Note, 1)).title == "x"
        with pytest.raises(NotFoundError):
            await session.get_or_404(Note, 4, description="There is no such note.")


async def test_get_or_404_passes_keyword_arguments_to_get(models: Models) -> None:
    """Flask-SQLAlchemy 3.1 passes extra keyword arguments to ``session.get()``."""
    Todo = models.Todo
    async with models.db.session() as session:
        todo = await session.get_or_404(Todo, 1, options=[sa_orm.defer(Todo.title, raiseload=True)])
        with pytest.raises(sa.exc.InvalidRequestError, match="raiseload"):
            todo.title  # noqa: B018
        again = await session.get_or_404(Todo, 1, populate_existing=True)
        assert again is todo and todo.title == "a"


async def test_not_found_error_carries_the_description_and_is_a_lookup_error(
    models: Models,
) -> None:
    """``description=`` is the text for the error page, as Flask-SQLAlchemy passes it to
    ``abort(404, description=...)``; outside a request it rides on the error."""
    async with models.db.session() as session:
        with pytest.raises(LookupError) as error:
            await session.get_or_404(models.Todo, 5, description="No todo 5.")
    assert isinstance(error.value, NotFoundError) and isinstance(error.value, AsyncBindError)
    assert error.value.description == "No todo 5."
    assert error.value.missing == "no 'Todo' with primary key 5"
    assert "'No todo 5.'" in str(error.value) and "NotFoundError" in str(error.value)


async def test_first_or_404(models: Models) -> None:
    """``first_or_404(select)`` is ``execute(select).scalar()``, or a 404 when that is None
    (``test_first_or_404``)."""
    db, Todo, Note = models.db, models.Todo, models.Note
    async with db.scope():
        assert (await db.first_or_404(sa.select(Todo).filter_by(title="a"))).id == 1
        # Two rows: the first one, as Result.scalar() does.
        note = await db.session.first_or_404(sa.select(Note).filter_by(title="y").order_by(Note.id))
        assert note.id == 2
        with pytest.raises(NotFoundError) as error:
            await db.first_or_404(sa.select(Todo).filter_by(title="c"), description="none")
        assert error.value.call == "first_or_404()" and error.value.description == "none"
        assert "found no row for" in str(error.value)
        assert "FROM todo WHERE todo.title = :title_1" in str(error.value)
        # A row whose first column is NULL is "not found" too, as in Flask-SQLAlchemy; the error
        # says that a row was found.
        with pytest.raises(NotFoundError) as error:
            await db.first_or_404(sa.select(sa.null()).select_from(Todo))
        assert error.value.missing.startswith("NULL in the first column of the first row of ")


async def test_one_or_404(models: Models) -> None:
    """``one_or_404(select)`` is ``execute(select).scalar_one()``; no row and several rows are
    both a 404 (``test_view_one_or_404``)."""
    db, Note = models.db, models.Note
    async with db.session() as session:
        assert (await session.one_or_404(sa.select(Note).filter_by(title="x"))).id == 1
        with pytest.raises(NotFoundError, match="more than one row"):
            await session.one_or_404(sa.select(Note).filter_by(title="y"))
        with pytest.raises(NotFoundError, match="found no row") as error:
            await session.one_or_404(sa.select(Note).filter_by(title="z"), description="gone")
        assert error.value.description == "gone"
    async with db.scope():
        assert await db.one_or_404(sa.select(sa.func.count()).select_from(Note)) == 3
        assert (await db.session.one_or_404(sa.select(Note.title).filter_by(id=3))) == "y"


async def test_outside_any_scope_db_says_how_to_get_a_session(models: Models) -> None:
    """``db.get_or_404`` acts on the current session, as ``db.session.get`` does: outside a
    request or scope there is none."""
    with pytest.raises(NoCurrentSessionError, match=r"db\.scope\(\)"):
        await models.db.get_or_404(models.Todo, 1)
    with pytest.raises(NoCurrentSessionError, match="get_or_404"):
        await models.db.session.get_or_404(models.Todo, 1)


async def test_a_session_class_of_ones_own_gets_the_helpers_and_keeps_its_methods() -> None:
    """``class_=`` of one's own subclasses AsyncBindSession: its sessions have the helpers too,
    and its own methods win."""

    class Mine(AsyncBindSession):
        async def get_or_404(self, *args: Any, **kwargs: Any) -> Any:
            return "mine"

        def marker(self) -> str:
            return "marked"

    db = AsyncBind("sqlite://", session_options={"class_": Mine})
    try:
        async with db.session() as session:
            assert type(session) is Mine and isinstance(session, ViewHelpers)
            assert session.marker() == "marked"
            assert await session.get_or_404(object, 1) == "mine"
            assert await session.one_or_404(sa.select(sa.literal(7))) == 7
    finally:
        await db.dispose()
