"""FastAPI: a dependency that yields a session per request, and the lifespan.

::

    db = AsyncBind("postgresql://...", binds={"users": "mysql://..."})
    app = FastAPI(lifespan=lifespan(db))
    Session = Annotated[AsyncSession, Depends(session_dependency(db))]

    @app.post("/items")
    async def create(session: Session) -> ...:
        session.add(Item(...))
        await session.commit()

FastAPI caches a dependency per request, so every ``Session`` parameter of one request, in the
handler or in its sub-dependencies, is the same session; ``db.session`` is that session too while
the handler runs. The session is closed when the request is done (after its background tasks, with
FastAPI's default dependency scope), rolling back what was not committed. A background task runs
after the response, in the request's task; one that needs the database should open a session of
its own, ``async with db.scope():`` or ``async with db.session() as session:``, rather than keep
using the request's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary, ref

from sqlalchemy.ext.asyncio import AsyncSession

from .starlette import lifespan

if TYPE_CHECKING:
    from ..core import AsyncBind

__all__ = ["lifespan", "session_dependency"]

SessionDependency = Callable[[], AsyncIterator[AsyncSession]]

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

        async def db_session() -> AsyncIterator[AsyncSession]:
            live = db_ref()
            if live is None:
                raise ReferenceError("The AsyncBind of this session dependency is gone.")
            async with live.scope() as session:
                yield session

        dependency = _dependencies[db] = db_session
    return dependency
