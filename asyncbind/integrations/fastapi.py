"""FastAPI: a dependency that yields a session per request, and the lifespan.

::

    db = AsyncBind("postgresql://...", binds={"users": "mysql://..."})
    app = FastAPI(lifespan=lifespan(db))
    Session = Annotated[AsyncBindSession, Depends(session_dependency(db))]

    @app.post("/items")
    async def create(session: Session) -> ...:
        session.add(Item(...))
        await session.commit()

    @app.get("/items/{item_id}")
    async def show(item_id: int, session: Session) -> ...:
        item = await session.get_or_404(Item, item_id)   # FastAPI's HTTPException(404)

FastAPI caches a dependency per request, so every ``Session`` parameter of one request, in the
handler or in its sub-dependencies, is the same session; ``db.session`` is that session too while
the handler runs. The session is closed when the request is done (after its background tasks, with
FastAPI's default dependency scope), rolling back what was not committed. A background task runs
after the response, in the request's task; one that needs the database should open a session of
its own, ``async with db.scope():`` or ``async with db.session() as session:``, rather than keep
using the request's.

In a request that has the dependency, ``get_or_404`` and the other view helpers raise FastAPI's
``HTTPException(404)`` and ``paginate`` reads ``?page=`` and ``?per_page=``, on the session of the
dependency and on ``db.session``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, NoReturn
from weakref import WeakKeyDictionary, ref

from fastapi import HTTPException

# FastAPI reads the dependency's annotations at run time: HTTPConnection must be importable here.
from starlette.requests import HTTPConnection

from .. import web
from ..views import AsyncBindSession
from .starlette import lifespan

if TYPE_CHECKING:
    from ..core import AsyncBind

__all__ = ["lifespan", "session_dependency"]

SessionDependency = Callable[[HTTPConnection], AsyncIterator[AsyncBindSession]]


class _FastAPIRequest:
    """An HTTP request's query string and FastAPI's 404, for the view helpers."""

    __slots__ = ("_connection",)

    def __init__(self, connection: HTTPConnection) -> None:
        self._connection = connection

    def query_arg(self, name: str) -> str | None:
        values = self._connection.query_params.getlist(name)  # get() gives the last one
        return values[0] if values else None

    def not_found(self, description: str | None) -> NoReturn:
        raise HTTPException(status_code=404, detail=description)


_dependencies: WeakKeyDictionary[AsyncBind, SessionDependency] = WeakKeyDictionary()


def session_dependency(db: AsyncBind) -> SessionDependency:
    """A FastAPI dependency (``Depends(session_dependency(db))``) yielding a session per request.

    It is the same function on every call for one ``db``, because FastAPI caches dependencies
    per request by their function: every ``Depends(session_dependency(db))`` of a request gets
    the same session (``Depends(..., use_cache=False)`` gets a new one).
    """
    dependency = _dependencies.get(db)
    if dependency is None:
        db_ref = ref(db)  # the cache must not keep db alive

        async def db_session(connection: HTTPConnection) -> AsyncIterator[AsyncBindSession]:
            live = db_ref()
            if live is None:
                raise ReferenceError("The AsyncBind of this session dependency is gone.")
            http = connection.scope["type"] == "http"
            with web.handling(_FastAPIRequest(connection)) if http else nullcontext():
                async with live.scope() as session:
                    yield session

        dependency = _dependencies[db] = db_session
    return dependency
