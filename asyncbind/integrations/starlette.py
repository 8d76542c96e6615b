"""Starlette: a lifespan that opens and disposes the binds, and a middleware that gives each request
its own session.

::

    db = AsyncBind("postgresql://...", binds={"users": "mysql://..."})
    app = Starlette(
        routes=[...],
        lifespan=lifespan(db),
        middleware=[Middleware(AsyncBindMiddleware, db=db)],
    )

    async def handler(request: Request) -> Response:
        session = request_session(request)  # also db.session, for this request
        ...
        await session.commit()

In a request, ``get_or_404`` and the other view helpers raise Starlette's
``HTTPException(404)``, and ``paginate`` reads ``?page=`` and ``?per_page=``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException

from .. import web
from ..cancellation import run_to_completion
from ..exceptions import NoCurrentSessionError, NotConfiguredError
from ..views import AsyncBindSession

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection
    from starlette.types import (
        ASGIApp,
        Message,
        Receive,
        Scope,
        Send,
        StatefulLifespan,
        StatelessLifespan,
    )

    from ..core import AsyncBind

__all__ = ["AsyncBindMiddleware", "lifespan", "request_session"]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]

_App = TypeVar("_App")


# For type checkers, the lifespan is of the kind Starlette's and FastAPI's lifespan= accept: one
# that yields no state without ``inner`` or with one that yields none, a stateful one otherwise.
@overload
def lifespan(db: AsyncBind, inner: None = None) -> StatelessLifespan[Any]: ...


@overload
def lifespan(db: AsyncBind, inner: StatelessLifespan[_App]) -> StatelessLifespan[_App]: ...


@overload
def lifespan(db: AsyncBind, inner: StatefulLifespan[_App]) -> StatefulLifespan[_App]: ...


def lifespan(db: AsyncBind, inner: Lifespan | None = None) -> Lifespan:
    """A lifespan for ``Starlette(lifespan=...)`` (or FastAPI's) that opens and disposes ``db``.

    At start-up it checks that ``db`` has binds and resets their pools, so that the serving event
    loop starts with connections of its own; at shutdown it disposes every engine, even when the
    app's own lifespan ``inner`` (run inside it, its state passed on) fails.
    """

    @asynccontextmanager
    async def db_lifespan(app: Any) -> AsyncIterator[Mapping[str, Any] | None]:
        if not db.engines:
            raise NotConfiguredError(
                "The app is starting with an AsyncBind that has no database configured. Pass a "
                "URL, AsyncBind('postgresql://...', binds={...}), or call db.configure(...) "
                "before the app starts."
            )
        await run_to_completion(db.dispose())
        try:
            if inner is None:
                yield None
            else:
                async with inner(app) as state:
                    yield state
        finally:
            await run_to_completion(db.dispose())

    return db_lifespan


def request_session(request: HTTPConnection, state_key: str = "session") -> AsyncBindSession:
    """The session :class:`AsyncBindMiddleware` gave ``request`` (``request.state.session``,
    which type checkers see as ``Any``), as an AsyncSession.

    ``state_key`` is the middleware's, if it was given one.
    """
    session = getattr(request.state, state_key, None)
    if not isinstance(session, AsyncBindSession):
        raise NoCurrentSessionError(
            f"This request has no asyncbind session at request.state.{state_key} (found "
            f"{type(session).__name__}). Add 'Middleware(AsyncBindMiddleware, db=db)' to the "
            "app's middleware, and pass request_session() the same state_key= as the middleware."
        )
    return session


class _StarletteRequest:
    """An HTTP request's query string and Starlette's 404, for the view helpers."""

    __slots__ = ("_query", "_scope")

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self._query: QueryParams | None = None

    def query_arg(self, name: str) -> str | None:
        if self._query is None:
            self._query = QueryParams(self._scope.get("query_string", b""))
        values = self._query.getlist(name)  # get() would give the last one
        return values[0] if values else None

    def not_found(self, description: str | None) -> NoReturn:
        raise HTTPException(404, detail=description)


class AsyncBindMiddleware:
    """Gives each HTTP request and websocket a session of its own, and always closes it.

    The session is ``request.state.session`` (``state_key`` names it; :func:`request_session`
    reads it with its type) and, for the request's task, ``db.session``. Closing rolls back
    whatever was not committed. In an HTTP request the view helpers (``db.get_or_404()``, ...)
    raise Starlette's ``HTTPException(404)`` and ``paginate()`` reads the query string.

    :param autocommit: False (the default): the handler commits. True: the session is committed
        when the handler's response has a status below 400, just before the response starts (so
        a failed commit becomes a 500, not a lost write behind a 200), and rolled back otherwise.
        Websockets always commit themselves.
    """

    def __init__(
        self,
        app: ASGIApp,
        db: AsyncBind,
        *,
        autocommit: bool = False,
        state_key: str = "session",
    ) -> None:
        self.app = app
        self.db = db
        self.autocommit = autocommit
        self.state_key = state_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        if kind == "http":
            with web.handling(_StarletteRequest(scope)):
                await self._handle(scope, receive, send)
        else:
            await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The request's state is its own copy of the lifespan's (the ASGI spec): the session goes
        # into it, beside what middleware and handlers put there, which those outside this
        # middleware see too; it is taken out again when the session is closed.
        state = scope.setdefault("state", {})
        async with self.db.scope() as session:
            state[self.state_key] = session
            try:
                if not (self.autocommit and scope["type"] == "http"):
                    await self.app(scope, receive, send)
                    return

                async def send_after_commit(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        if message["status"] < 400:
                            await session.commit()
                        else:
                            await session.rollback()
                    await send(message)

                await self.app(scope, receive, send_after_commit)
            finally:
                state.pop(self.state_key, None)
