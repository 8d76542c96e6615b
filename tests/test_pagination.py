"""``paginate()`` and ``Pagination``: Flask-SQLAlchemy 3.1's numbers for the same inputs as its
own tests (tests/test_pagination.py, tests/test_view_query.py), then real pages of real tables on
SQLite, PostgreSQL and MariaDB, counted in the select's own bind. The query string and the
frameworks' 404s are in test_views_frameworks.py.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm as sa_orm

from asyncbind import AsyncBind, NoCurrentSessionError, NotFoundError, Pagination

# -- the numbers, as Flask-SQLAlchemy's RangePagination tests them -----------------------------


def numbers(page: int = 1, per_page: int = 10, total: int | None = 150) -> Pagination[int]:
    """A page of ``range(total)`` (150 items when the total is not known)."""
    data = range(150 if total is None else total)
    first = (page - 1) * per_page
    return Pagination(
        list(data[first : first + per_page]), page=page, per_page=per_page, total=total
    )


def test_first_page() -> None:
    """Flask-SQLAlchemy ``test_first_page``."""
    p = numbers()
    assert (p.page, p.per_page, p.total, p.pages) == (1, 10, 150, 15)
    assert not p.has_prev and p.prev_num is None
    assert p.has_next and p.next_num == 2


def test_last_page() -> None:
    """Flask-SQLAlchemy ``test_last_page``."""
    p = numbers(page=15)
    assert p.page == 15
    assert p.has_prev and p.prev_num == 14
    assert not p.has_next and p.next_num is None


def test_item_numbers() -> None:
    """Flask-SQLAlchemy ``test_item_numbers_first_page``, ``..._last_page`` and ``..._0``."""
    p = numbers()
    p.items = list(range(10))
    assert (p.first, p.last) == (1, 10)
    p = numbers(page=15)
    p.items = list(range(5))
    assert (p.first, p.last) == (141, 145)
    p = numbers(total=0)
    assert (p.first, p.last) == (0, 0)


@pytest.mark.parametrize("total", [0, None])
def test_0_pages(total: int | None) -> None:
    """Flask-SQLAlchemy ``test_0_pages``: no items, or a total that was not counted."""
    p = numbers(total=total)
    assert p.pages == 0
    assert not p.has_prev and not p.has_next


@pytest.mark.parametrize(
    ("page", "expect"),
    [
        (1, [1, 2, 3, 4, 5, None, 14, 15]),
        (2, [1, 2, 3, 4, 5, 6, None, 14, 15]),
        (3, [1, 2, 3, 4, 5, 6, 7, None, 14, 15]),
        (4, [1, 2, 3, 4, 5, 6, 7, 8, None, 14, 15]),
        (5, [1, 2, 3, 4, 5, 6, 7, 8, 9, None, 14, 15]),
        (6, [1, 2, None, 4, 5, 6, 7, 8, 9, 10, None, 14, 15]),
        (7, [1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 14, 15]),
        (8, [1, 2, None, 6, 7, 8, 9, 10, 11, 12, None, 14, 15]),
        (9, [1, 2, None, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        (10, [1, 2, None, 8, 9, 10, 11, 12, 13, 14, 15]),
        (11, [1, 2, None, 9, 10, 11, 12, 13, 14, 15]),
        (12, [1, 2, None, 10, 11, 12, 13, 14, 15]),
        (13, [1, 2, None, 11, 12, 13, 14, 15]),
        (14, [1, 2, None, 12, 13, 14, 15]),
        (15, [1, 2, None, 13, 14, 15]),
    ],
)
def test_iter_pages(page: int, expect: list[int | None]) -> None:
    """Flask-SQLAlchemy ``test_iter_pages``: the same table."""
    assert list(numbers(page=page).iter_pages()) == expect


def test_iter_0_pages() -> None:
    """Flask-SQLAlchemy ``test_iter_0_pages``."""
    assert list(numbers(total=0).iter_pages()) == []


@pytest.mark.parametrize("page", [1, 2, 3, 4])
def test_iter_pages_short(page: int) -> None:
    """Flask-SQLAlchemy ``test_iter_pages_short``."""
    assert list(numbers(page=page, total=40).iter_pages()) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("arguments", "page", "expect"),
    [
        # The docstring's example: 20 pages, page 7.
        ({}, 7, [1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20]),
        # No right edge: a None still says that pages are skipped at the end.
        ({"right_edge": 0}, 7, [1, 2, None, 5, 6, 7, 8, 9, 10, 11, None]),
        ({"left_edge": 0, "right_edge": 0}, 1, [1, 2, 3, 4, 5, None]),
        ({"left_current": 0, "right_current": 0}, 10, [1, 2, None, 10, None, 19, 20]),
        # A page past the last (paginate(error_out=False)): the edge, then a None.
        ({}, 25, [1, 2, None]),
    ],
)
def test_iter_pages_arguments(
    arguments: dict[str, int], page: int, expect: list[int | None]
) -> None:
    """What Flask-SQLAlchemy 3.1's ``iter_pages`` yields for other arguments, 200 items of 10."""
    assert list(numbers(page=page, total=200).iter_pages(**arguments)) == expect


def test_iterating_a_pagination_iterates_its_items() -> None:
    """Flask-SQLAlchemy 3.0: "Iterating over a pagination object iterates over its items"."""
    p = numbers(page=2)
    assert list(p) == list(range(10, 20))
    assert repr(p) == "<Pagination page 2 of 15 (10 items, 10 per page, 150 in all)>"


async def test_a_pagination_made_by_hand_cannot_query_its_neighbours() -> None:
    with pytest.raises(TypeError, match="not made by paginate"):
        await numbers().next()


# -- real pages --------------------------------------------------------------------------------


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

        self.Todo, self.Note = Todo, Note

    async def add(self, todos: int, notes: int = 0) -> None:
        async with self.db.session() as session:
            session.add_all(self.Todo(id=i, title=f"task {i}") for i in range(1, todos + 1))
            session.add_all(self.Note(id=i) for i in range(1, notes + 1))
            await session.commit()

    def todos(self) -> sa.Select[Any]:
        return sa.select(self.Todo).order_by(self.Todo.id)


async def make_models(db: AsyncBind, todos: int, notes: int = 0) -> Models:
    models = Models(db)
    await db.create_all()
    await models.add(todos, notes)
    return models


@pytest.fixture
async def models(backend: str, new_database: Any, make_db: Callable[..., AsyncBind]) -> Models:
    """250 todos, as Flask-SQLAlchemy's ``paginate`` fixture has, and 45 notes."""
    db = make_db(await new_database(backend), binds={"notes": await new_database(backend)})
    return await make_models(db, 250, 45)


async def test_paginate(models: Models) -> None:
    """Flask-SQLAlchemy ``test_paginate``: page 1 of 20 items by default, 250 in all."""
    async with models.db.scope():
        p = await models.db.paginate(models.todos())
    assert (p.page, p.per_page, p.total, p.pages) == (1, 20, 250, 13)
    assert [todo.id for todo in p.items] == list(range(1, 21))
    assert all(isinstance(todo, models.Todo) for todo in p)
    assert (p.first, p.last, p.has_prev, p.next_num) == (1, 20, False, 2)


async def test_paginate_page_and_max_per_page(models: Models) -> None:
    """Flask-SQLAlchemy ``test_paginate_qs`` (here as arguments) and ``test_paginate_max``."""
    async with models.db.session() as session:
        p = await session.paginate(models.todos(), page=2, per_page=10)
        assert (p.page, p.per_page, p.first, p.last) == (2, 10, 11, 20)
        assert [todo.id for todo in p] == list(range(11, 21))
        p = await session.paginate(models.todos(), per_page=100, max_per_page=50)
        assert p.per_page == 50 and len(p.items) == 50 and p.pages == 5
        last = await session.paginate(models.todos(), page=13)
        assert (last.first, last.last, last.has_next, last.next_num) == (241, 250, False, None)


async def test_next_and_prev_keep_the_page_size_and_the_total(models: Models) -> None:
    """Flask-SQLAlchemy ``test_next_page_size`` and ``test_view_query.test_paginate``: ``next()``
    keeps ``per_page`` and the total, without counting again. Here they are coroutines."""
    db = models.db
    async with db.scope():
        p = await db.session.paginate(models.todos(), per_page=110, max_per_page=250)
        assert (p.page, p.per_page) == (1, 110)
        following = await p.next()
        assert (following.page, following.per_page, following.total) == (2, 110, 250)
        assert [todo.id for todo in following][:2] == [111, 112]
        last = await following.next()
        assert (last.page, len(last.items), last.has_next) == (3, 30, False)
        # Past the last page: empty, not an error (next() has error_out=False by default) ...
        assert (await last.next()).items == []
        # ... unless asked.
        with pytest.raises(NotFoundError, match="no items on page 4"):
            await last.next(error_out=True)
        back = await last.prev()
        assert (back.page, back.total, back.items[0].id) == (2, 250, 111)
        first = await p.prev()  # before page 1: page 1, as error_out=False makes it
        assert first.page == 1 and first.items[0].id == 1


async def test_no_count(models: Models, statements: Any) -> None:
    """Flask-SQLAlchemy ``test_no_count``: ``count=False`` leaves the total unknown, with no
    count query."""
    log = statements(models.db)
    async with models.db.session() as session:
        p = await session.paginate(models.todos(), count=False)
    assert p.total is None and p.pages == 0 and not p.has_next and len(p.items) == 20
    assert len(log) == 1 and "count" not in log[0][1].lower()


@pytest.mark.parametrize(
    ("page", "per_page", "missing"),
    [
        (0, None, "page 0, below the first page"),
        (None, -1, "-1 items per page, not between 1 and 9223372036854775807"),
        (None, 2**63, "9223372036854775808 items per page, not between 1 and"),
        (2**62, None, "page 4611686018427387904 \\(20 per page\\), past any table's rows"),
    ],
)
async def test_error_out(models: Models, page: Any, per_page: Any, missing: str) -> None:
    """Flask-SQLAlchemy ``test_error_out`` (the numbers; the query string's are in
    test_views_frameworks.py): a 404, here NotFoundError; with ``error_out=False``, page 1 and 20
    items per page instead."""
    async with models.db.session() as session:
        with pytest.raises(NotFoundError, match=missing) as error:
            await session.paginate(models.todos(), page=page, per_page=per_page)
        assert error.value.call == "paginate()"
        p = await session.paginate(models.todos(), page=page, per_page=per_page, error_out=False)
    assert (p.page, p.per_page, len(p.items)) == (1, 20, 20)


async def test_the_last_page_sql_can_count(models: Models) -> None:
    """The farthest page whose OFFSET fits in 64 bits is asked of the database (none has that
    many rows: a 404); one further is a 404 before any query, not the driver's overflow error."""
    most = 2**63 - 1
    async with models.db.session() as session:
        with pytest.raises(NotFoundError, match="no items on page"):
            await session.paginate(models.todos(), page=most // 20 + 1, count=False)
        with pytest.raises(NotFoundError, match="past any table's rows"):
            await session.paginate(models.todos(), page=most // 20 + 2, count=False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"page": "2"}, "paginate(page='2'): expected a whole number (int) or None, got str."),
        ({"per_page": 2.5}, "paginate(per_page=2.5): expected a whole number (int) or None"),
        ({"max_per_page": True}, "paginate(max_per_page=True): expected a whole number"),
    ],
)
async def test_page_arguments_that_are_not_whole_numbers(
    arguments: dict[str, Any], message: str
) -> None:
    """A page, size or bound given as an argument is the caller's own: one that is not an int is
    a TypeError saying so, before any query (the query string's are a 404:
    test_views_frameworks.py)."""
    db = AsyncBind("sqlite://")
    try:
        models = Models(db)
        async with db.session() as session:
            with pytest.raises(TypeError) as error:
                await session.paginate(models.todos(), **arguments)
            assert str(error.value).startswith(message)
            assert not session.in_transaction()
    finally:
        await db.dispose()


async def test_paginate_takes_a_select() -> None:
    db = AsyncBind("sqlite://")
    try:
        models = Models(db)
        async with db.session() as session:
            with pytest.raises(TypeError, match=r"takes a select\(\) statement.*the class 'Todo'"):
                await session.paginate(models.Todo)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"given <sqlalchemy\.sql\.elements\.TextClause"):
                await session.paginate(sa.text("SELECT 1"))  # type: ignore[arg-type]
            # A UNION pages like a select.
            union = sa.union(sa.select(sa.literal(1)), sa.select(sa.literal(2)))
            assert (await session.paginate(union, per_page=1)).total == 2
    finally:
        await db.dispose()


async def test_no_items_404(
    backend: str, new_database: Any, make_db: Callable[..., AsyncBind]
) -> None:
    """Flask-SQLAlchemy ``test_no_items_404``: an empty first page is fine, an empty later page
    is a 404."""
    db = make_db(await new_database(backend), binds={"notes": await new_database(backend)})
    models = await make_models(db, 0)
    async with db.scope():
        p = await db.paginate(models.todos())
        assert (p.items, p.total, p.pages, p.first, p.last) == ([], 0, 0, 0, 0)
        with pytest.raises(NotFoundError, match="no items on page 2"):
            await db.paginate(models.todos(), page=2)
        p = await db.paginate(models.todos(), page=2, error_out=False)
        assert (p.page, p.items) == (2, [])


async def test_the_count_runs_in_the_selects_own_bind(
    backend_pair: tuple[str, str],
    new_database: Any,
    make_db: Callable[..., AsyncBind],
    statements: Any,
) -> None:
    """A select of a model of the "notes" bind is counted in the notes database, on another
    server than the default bind (Flask-SQLAlchemy's session routes the count the same way)."""
    default, notes = backend_pair
    db = make_db(await new_database(default), binds={"notes": await new_database(notes)})
    models = await make_models(db, 3, 45)
    log = statements(db)
    Note = models.Note
    async with db.scope():
        p = await db.paginate(sa.select(Note).where(Note.id > 5).order_by(Note.id), per_page=15)
        assert (p.total, p.pages, p.items[0].id) == (40, 3, 6)
        rows = await db.paginate(sa.select(Note.id).order_by(Note.id.desc()), per_page=5)
        assert (rows.items, rows.total) == ([45, 44, 43, 42, 41], 45)
    assert [key for key, _ in log] == ["notes"] * 4
    assert "count(*)" in log[1][1].lower()


async def test_a_pagination_does_not_keep_its_session_or_use_it_once_closed(
    models: Models,
) -> None:
    """``prev()`` / ``next()`` need the session the page was made with, still open: once its
    scope (a request) has closed it they refuse, instead of opening a connection nobody closes.
    The pagination holds no strong reference to the session."""
    db = models.db
    async with db.scope() as session:
        p = await db.paginate(models.todos())
        assert (await p.next()).page == 2
        gone = weakref.ref(session)
    del session
    gc.collect()
    assert gone() is None and p.items[0].id == 1
    with pytest.raises(NoCurrentSessionError, match=r"'Pagination\.next\(\)'.*closed"):
        await p.next()

    async with db.scope() as first:  # kept alive: the mark, not the weak reference, refuses
        p = await db.paginate(models.todos())
        await db.session.remove()  # closed for good too; db.session is a new session now
        assert db.session.sync_session is not first.sync_session
        with pytest.raises(NoCurrentSessionError, match=r"'Pagination\.prev\(\)'"):
            await p.prev()
        assert (await db.paginate(models.todos(), page=2)).items[0].id == 21
    assert all(engine.sync_engine.pool.checkedout() == 0 for engine in db.engines.values())
