"""``paginate()``: one page of a select's results, with Flask-SQLAlchemy 3.1's ``Pagination``
numbers.

A :class:`Pagination` holds the page's items and numbers, and what it needs to fetch the page
before or after it: the select, and a weak reference to the session it was made with. It does not
keep that session alive, and refuses to use one that a request or scope has closed (using it would
open a connection that nobody closes).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from math import ceil
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncSession

from . import web
from .exceptions import NoCurrentSessionError

__all__ = ["CLOSED_BY_SCOPE", "Pagination", "describe", "paginate"]

_T = TypeVar("_T")

#: The key of ``session.info`` set on a session that its request or scope has closed for good.
CLOSED_BY_SCOPE = "asyncbind.closed_by_scope"


def describe(statement: Any) -> str:
    """``statement`` as SQL on one line, cut short, for a message."""
    try:
        text = " ".join(str(statement).split())
    except Exception:  # a construct that needs a dialect to compile
        return f"a {type(statement).__name__} statement"
    return repr(text if len(text) <= 200 else f"{text[:197]}...")


class _Source:
    """The select a pagination pages through, and the session it runs on."""

    __slots__ = ("_session", "select")

    def __init__(self, session: AsyncSession, select: sa.Select[Any]) -> None:
        self._session = weakref.ref(session)
        self.select = select

    def session(self, call: str) -> AsyncSession:
        session = self._session()
        if session is None or session.info.get(CLOSED_BY_SCOPE):
            raise NoCurrentSessionError(
                f"'Pagination.{call}' queries on the session the pagination was made with, and "
                "that session is closed: the request or scope it belonged to has ended. Call "
                "paginate() again in a request or scope that is still open, with page=..."
            )
        return session


class Pagination(Generic[_T]):
    """The items of one page of a select, and the numbers a pagination widget needs.

    Flask-SQLAlchemy 3.1's ``Pagination``, made by ``paginate()``. Iterating over it iterates over
    :attr:`items`. :meth:`prev` and :meth:`next` are coroutines (they query the database):
    ``await page.next()``. They use the session this page was made with, which must still be
    open: a request's session is closed when the request ends.
    """

    __slots__ = ("_source", "items", "max_per_page", "page", "per_page", "total")

    def __init__(
        self,
        items: list[_T],
        *,
        page: int,
        per_page: int,
        total: int | None,
        max_per_page: int | None = None,
        source: _Source | None = None,
    ) -> None:
        self.items = items
        """The items on this page."""
        self.page = page
        """This page's number, from 1."""
        self.per_page = per_page
        """The most items a page holds."""
        self.total = total
        """How many items all pages hold together; None if ``paginate(count=False)``."""
        self.max_per_page = max_per_page
        """The upper bound ``per_page`` was held to; None for none."""
        self._source = source

    @property
    def first(self) -> int:
        """The number of this page's first item, counted from 1 over all pages; 0 if it has
        none."""
        return (self.page - 1) * self.per_page + 1 if self.items else 0

    @property
    def last(self) -> int:
        """The number of this page's last item, counted from 1 over all pages; 0 if it has
        none."""
        return self.first + len(self.items) - 1 if self.items else 0

    @property
    def pages(self) -> int:
        """How many pages there are; 0 when there are no items or the total is not known."""
        return ceil(self.total / self.per_page) if self.total else 0

    @property
    def has_prev(self) -> bool:
        """Whether a page comes before this one."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """Whether a page comes after this one."""
        return self.page < self.pages

    @property
    def prev_num(self) -> int | None:
        """The number of the page before, or None on the first page."""
        return self.page - 1 if self.has_prev else None

    @property
    def next_num(self) -> int | None:
        """The number of the page after, or None on the last page."""
        return self.page + 1 if self.has_next else None

    async def prev(self, *, error_out: bool = False) -> Pagination[_T]:
        """Query the page before this one (a coroutine), with the same ``per_page``.

        ``error_out`` as for ``paginate()``. The total is not counted again.
        """
        return await self._neighbour(self.page - 1, error_out, "prev()")

    async def next(self, *, error_out: bool = False) -> Pagination[_T]:
        """Query the page after this one (a coroutine), with the same ``per_page``.

        ``error_out`` as for ``paginate()``. The total is not counted again.
        """
        return await self._neighbour(self.page + 1, error_out, "next()")

    async def _neighbour(self, page: int, error_out: bool, call: str) -> Pagination[_T]:
        source = self._source
        if source is None:
            raise TypeError(f"This Pagination was not made by paginate(), so it has no {call}.")
        neighbour: Pagination[_T] = await _fetch(
            source,
            source.session(call),
            page=page,
            per_page=self.per_page,
            max_per_page=self.max_per_page,
            error_out=error_out,
            count=False,
        )
        neighbour.total = self.total
        return neighbour

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> Iterator[int | None]:
        """Page numbers for a pagination widget, None where pages are skipped.

        The first ``left_edge`` pages, the ``left_current`` pages before this one, this one, the
        ``right_current`` pages after it, and the last ``right_edge`` pages. With 20 pages, on
        page 7: 1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20.
        """
        last = self.pages
        if last == 0:
            return
        left = min(left_edge, last)
        yield from range(1, left + 1)
        if left == last:
            return
        # The pages around this one; empty when this page is past the last.
        middle_first = max(left + 1, self.page - left_current)
        middle_last = min(self.page + right_current, last)
        if middle_first > left + 1:
            yield None
        yield from range(middle_first, middle_last + 1)
        if middle_last == last:
            return
        right_first = max(middle_last + 1, last - right_edge + 1)
        if right_first > middle_last + 1:
            yield None  # also with right_edge=0: pages are skipped at the end
        yield from range(right_first, last + 1)

    def __iter__(self) -> Iterator[_T]:
        return iter(self.items)

    def __repr__(self) -> str:
        total = "?" if self.total is None else self.total
        return (
            f"<Pagination page {self.page} of {self.pages} ({len(self.items)} items, "
            f"{self.per_page} per page, {total} in all)>"
        )


async def paginate(
    session: AsyncSession,
    select: sa.Select[Any],
    *,
    page: int | None,
    per_page: int | None,
    max_per_page: int | None,
    error_out: bool,
    count: bool,
) -> Pagination[Any]:
    """``session.paginate()``: see :meth:`asyncbind.views.ViewHelpers.paginate`."""
    if not isinstance(select, sa.sql.expression.GenerativeSelect):
        given = f"the class {select.__name__!r}" if isinstance(select, type) else repr(select)
        raise TypeError(
            f"paginate() takes a select() statement, such as sa.select(User).order_by(User.id); "
            f"it was given {given}."
        )
    for name, value in (("page", page), ("per_page", per_page), ("max_per_page", max_per_page)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(
                f"paginate({name}={value!r}): expected a whole number (int) or None, got "
                f"{type(value).__name__}. With {name}=None, paginate() reads it from the "
                "request's query string itself."
            )
    return await _fetch(
        _Source(session, select),
        session,
        page=page,
        per_page=per_page,
        max_per_page=max_per_page,
        error_out=error_out,
        count=count,
    )


async def _fetch(
    source: _Source,
    session: AsyncSession,
    *,
    page: int | None,
    per_page: int | None,
    max_per_page: int | None,
    error_out: bool,
    count: bool,
) -> Pagination[Any]:
    page, per_page = web.page_args(page, per_page, max_per_page, error_out)
    select = source.select
    result = await session.execute(select.limit(per_page).offset((page - 1) * per_page))
    items = list(result.unique().scalars())
    if not items and page != 1 and error_out:
        web.not_found(
            "paginate()", f"no items on page {page} ({per_page} per page) of {describe(select)}"
        )
    total = None
    if count:
        # Counted in the select's own bind: the subquery's tables route the count.
        rows = select.options(sa_orm.lazyload("*")).order_by(None).subquery()
        total = (await session.execute(sa.select(sa.func.count()).select_from(rows))).scalar_one()
    return Pagination(
        items,
        page=page,
        per_page=per_page,
        total=total,
        max_per_page=max_per_page,
        source=source,
    )
