"""Flask-SQLAlchemy's view helpers: ``get_or_404``, ``first_or_404``, ``one_or_404`` and
``paginate``.

They are methods of :class:`ViewHelpers`, which every session asyncbind makes has
(:class:`AsyncBindSession`, or a ``class_=`` of your own that subclasses it), and so has
``db.session``, where they act on the current session; ``db`` has them too. In a request of an
app set up with an integration, "not found" is the framework's own 404 and ``paginate`` reads
``?page=`` and ``?per_page=``; elsewhere it is :class:`~asyncbind.NotFoundError` (see
:mod:`asyncbind.web`).
"""

from __future__ import annotations

from typing import Any, TypeVar, TypeVarTuple, cast, overload

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from . import web
from .pagination import Pagination, describe, paginate
from .routing import RoutingSession
from .tasksafety import TaskSafeSession

__all__ = ["AsyncBindSession", "ViewHelpers"]

_O = TypeVar("_O", bound=object)
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class ViewHelpers:
    """``get_or_404``, ``first_or_404``, ``one_or_404`` and ``paginate``, as in Flask-SQLAlchemy
    3.1, for a class that is an AsyncSession or (``db.session``) stands for one."""

    __slots__ = ()

    def _helper_session(self, call: str) -> AsyncSession:
        """The session the helpers run on: this one (``db.session`` answers with the current
        session)."""
        return cast(AsyncSession, self)

    async def get_or_404(
        self,
        entity: type[_O],
        ident: Any,
        *,
        description: str | None = None,
        **kwargs: Any,
    ) -> _O:
        """``session.get(entity, ident, **kwargs)``, with a 404 instead of None.

        ``description`` is the text for the error page. In a request of an app set up with an
        integration the 404 is the framework's own (Quart's ``abort(404)``, Starlette's or
        FastAPI's ``HTTPException``); elsewhere :class:`~asyncbind.NotFoundError`.
        """
        value = await self._helper_session("get_or_404").get(entity, ident, **kwargs)
        if value is None:
            name = getattr(entity, "__name__", repr(entity))
            web.not_found("get_or_404()", f"no {name!r} with primary key {ident!r}", description)
        return value

    @overload
    async def first_or_404(
        self, statement: TypedReturnsRows[_T, *_Ts], *, description: str | None = None
    ) -> _T: ...

    @overload
    async def first_or_404(
        self, statement: Executable, *, description: str | None = None
    ) -> Any: ...

    async def first_or_404(self, statement: Executable, *, description: str | None = None) -> Any:
        """The first column of the first row of ``statement`` (``Result.scalar()``), with a 404
        instead of None; see :meth:`get_or_404`."""
        result = await self._helper_session("first_or_404").execute(statement)
        row = result.first()
        if row is None:
            missing = f"no row for {describe(statement)}"
        elif row[0] is None:
            missing = f"NULL in the first column of the first row of {describe(statement)}"
        else:
            return row[0]
        web.not_found("first_or_404()", missing, description)

    @overload
    async def one_or_404(
        self, statement: TypedReturnsRows[_T, *_Ts], *, description: str | None = None
    ) -> _T: ...

    @overload
    async def one_or_404(self, statement: Executable, *, description: str | None = None) -> Any: ...

    async def one_or_404(self, statement: Executable, *, description: str | None = None) -> Any:
        """The first column of the one row of ``statement`` (``Result.scalar_one()``), with a 404
        when there is no row or more than one; see :meth:`get_or_404`."""
        result = await self._helper_session("one_or_404").execute(statement)
        try:
            return result.scalar_one()
        except sa_exc.NoResultFound:
            missing = f"no row for {describe(statement)}"
        except sa_exc.MultipleResultsFound:
            missing = f"more than one row for {describe(statement)}"
        web.not_found("one_or_404()", missing, description)

    @overload
    async def paginate(
        self,
        select: TypedReturnsRows[_T, *_Ts],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[_T]: ...

    @overload
    async def paginate(
        self,
        select: sa.Select[Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[Any]: ...

    async def paginate(
        self,
        select: Any,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[Any]:
        """One page of ``select``'s results (``select(User)``: the first column of each row,
        duplicates removed), as Flask-SQLAlchemy 3.1's ``paginate``.

        :param page: the page, from 1. Default: ``?page=`` of the request's query string in a
            request of an app set up with an integration, else 1.
        :param per_page: items per page. Default: ``?per_page=`` in a request, else 20.
        :param max_per_page: the most items per page, whatever ``per_page`` says; None for no
            limit.
        :param error_out: 404 (as :meth:`get_or_404`) when page or per_page is not a whole
            number or is below 1, or when a page after the first is empty; without it page 1 or
            20 per page are used instead.
        :param count: count the items of all pages (:attr:`Pagination.total`), with one more
            query, in the select's own bind.

        The :class:`~asyncbind.pagination.Pagination`'s ``prev()`` and ``next()`` are
        coroutines that query on this session: it must still be open.
        """
        return await paginate(
            self._helper_session("paginate"),
            select,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )


class AsyncBindSession(ViewHelpers, TaskSafeSession):
    """The :class:`~sqlalchemy.ext.asyncio.AsyncSession` asyncbind makes: SQLAlchemy's own,
    refused to a second task while one is using it (:class:`~asyncbind.tasksafety.TaskSafeSession`),
    with the view helpers of :class:`ViewHelpers`, wrapping a :class:`~asyncbind.RoutingSession`.

    A ``class_=`` of your own in ``session_options`` subclasses it:
    ``class MySession(asyncbind.AsyncBindSession): ...``.
    """

    sync_session_class: type[sa_orm.Session] = RoutingSession
