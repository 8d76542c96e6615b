"""``db.session``: a new session when called, the current session when used as one.

``db.session()`` makes a new, independent :class:`~sqlalchemy.ext.asyncio.AsyncSession`.
``db.session.add(...)``, ``await db.session.execute(...)`` and the rest act on the *current*
session: the one of the request being handled (an integration opens it), of the Quart app context,
or of the task scope ``async with db.scope():``. Which one is current is kept in a
:class:`~contextvars.ContextVar`, so every task and request sees its own. A scope's session is
made on first use and closed when the scope ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncSession

from . import recording
from .exceptions import AsyncBindError, NoCurrentSessionError, NotConfiguredError
from .pagination import CLOSED_BY_SCOPE
from .routing import check_session_class
from .views import AsyncBindSession, ViewHelpers

if TYPE_CHECKING:
    from .config import BindKey
    from .core import AsyncBind

    # For type checkers, db.session is an AsyncSession (it forwards every attribute to one).
    _Proxied = AsyncSession
else:
    _Proxied = object

__all__ = ["Scope", "ScopeProvider", "SessionFactory", "SessionScope"]

ScopeProvider = Callable[[], "Scope | None"]
"""Returns the scope of an ambient context (a Quart app context), or None outside one."""


class Scope:
    """The session of one request, app context or task scope, made on first use."""

    __slots__ = ("_factory", "_options", "ended", "session")

    def __init__(self, factory: SessionFactory, options: Mapping[str, Any] | None = None) -> None:
        self._factory = factory
        self._options = dict(options) if options else {}  # for the factory: twophase=True, ...
        self.session: AsyncBindSession | None = None
        self.ended = False

    def get(self) -> AsyncBindSession:
        """The scope's session, made now if it has none yet."""
        session = self.session
        if session is None:
            if self.ended:
                # A task that inherited the scope outlived it: a new session here would never
                # be closed.
                raise NoCurrentSessionError(_SCOPE_ENDED)
            session = self.session = self._factory(**self._options)
        return session

    async def close(self) -> None:
        """Close the session (rolling back what was not committed) and forget it.

        Runs to completion even if the caller is cancelled, so its connection goes back to the
        pool. The next :meth:`get` makes a new session.
        """
        session, self.session = self.session, None
        if session is not None:
            # The factory's sessions close to completion by themselves (see tasksafety.py).
            await session.close()
            # A Pagination made with it must not open a connection that nobody would close.
            session.info[CLOSED_BY_SCOPE] = True

    async def end(self) -> None:
        """Close the session for good: :meth:`get` raises from now on."""
        self.ended = True
        await self.close()


class SessionScope:
    """``async with db.scope() as session:``: a session for this task, as ``db.session``.

    Inside the block, ``db.session.<attr>`` is this task's own session (also returned by
    ``__aenter__``); when the block ends the session is closed, rolling back anything not
    committed, and the previous current session (if any) is current again. Scopes nest. Tasks
    started inside the block inherit the scope, and so its session: a task that runs at the same
    time should open a scope of its own.
    """

    __slots__ = ("_factory", "_options", "_recording", "_scope", "_token")

    def __init__(self, factory: SessionFactory, **options: Any) -> None:
        self._factory = factory
        self._options = options
        self._scope: Scope | None = None
        self._token: Token[Scope | None] | None = None
        self._recording: recording.Recording | None = None

    async def __aenter__(self) -> AsyncBindSession:
        if self._scope is not None:
            raise AsyncBindError(
                "This db.scope() is already open; call db.scope() again for another scope."
            )
        if not self._factory._db.bind_configs:
            raise NotConfiguredError(_not_configured("db.scope()"))
        scope = Scope(self._factory, self._options)
        session = scope.get()
        self._scope = scope
        self._token = self._factory._var.set(scope)
        if self._factory._db.record_queries:
            self._recording = recording.begin()
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, token = self._scope, self._token
        self._scope = self._token = None
        if scope is None or token is None:
            return
        recording.end(self._recording)
        self._recording = None
        try:
            self._factory._var.reset(token)
        except ValueError:
            # Exited in another context than it was entered in (a framework moved it): the
            # context that holds the scope is not ours to change.
            pass
        await scope.end()


class SessionFactory(ViewHelpers, _Proxied):
    """``db.session``: call it for a new session; use it as one for the current session.

    - ``async with db.session() as session: ...`` opens a new routing
      :class:`~sqlalchemy.ext.asyncio.AsyncSession` of your own, closed at the end of the block.
    - ``db.session.add(obj)``, ``await db.session.execute(stmt)``, ``await db.session.commit()``
      act on the current session: the request's (in an app set up with an integration), the
      Quart app context's, or the task scope's (``async with db.scope():``). Outside all of them
      they raise :class:`~asyncbind.NoCurrentSessionError`.
    - ``await db.session.remove()`` closes the current session now; the next use makes a new one.
    - ``await db.session.get_or_404(User, 1)``, ``first_or_404``, ``one_or_404`` and
      ``paginate`` run on the current session (:class:`~asyncbind.views.ViewHelpers`).
    """

    __slots__ = ("_binds", "_db", "_providers", "_var")

    _binds: Mapping[BindKey, object]
    _db: AsyncBind
    _providers: list[ScopeProvider]
    _var: ContextVar[Scope | None]

    def __init__(
        self, db: AsyncBind, providers: list[ScopeProvider], binds: Mapping[BindKey, object]
    ) -> None:
        """``providers`` is the AsyncBind's own list of ambient scopes
        (:meth:`AsyncBind.add_scope_provider`), consulted in order; ``binds`` its binds, by key
        (empty until it is configured)."""
        set_ = object.__setattr__
        set_(self, "_db", db)
        set_(self, "_providers", providers)
        set_(self, "_binds", binds)
        var: ContextVar[Scope | None] = ContextVar(f"asyncbind_session_{id(db):x}", default=None)
        set_(self, "_var", var)

    def __call__(self, **kwargs: Any) -> AsyncBindSession:
        if not self._binds:
            raise NotConfiguredError(_not_configured("db.session()"))
        maker = self._db.sessionmaker
        if not kwargs:
            # What calling the sessionmaker does with no arguments, without its merging of the
            # arguments into its options, one option at a time.
            return maker.class_(**maker.kw)
        if kwargs.get("sync_session_class") is not None:
            # Routing lives in the sync session: one given per call must route too.
            check_session_class(kwargs["sync_session_class"], "db.session(sync_session_class=...)")
        return maker(**kwargs)

    def scope(self, **options: Any) -> SessionScope:
        """``async with db.session.scope():``, the same as ``db.scope()``."""
        return SessionScope(self, **options)

    async def remove(self) -> None:
        """Close the current session; the next ``db.session.<attr>`` makes a new one.

        Flask-SQLAlchemy's ``db.session.remove()``. Does nothing outside any scope.
        """
        scope = self._var.get() or self._ambient()
        if scope is not None:
            await scope.close()

    def _ambient(self) -> Scope | None:
        for provider in self._providers:
            scope = provider()
            if scope is not None:
                return scope
        return None

    def _helper_session(self, call: str) -> AsyncSession:
        return self._current(call)

    def _current(self, name: str) -> AsyncBindSession:
        scope = self._var.get() or self._ambient()
        if scope is None:
            if not self._db.bind_configs:
                raise NotConfiguredError(_not_configured(f"db.session.{name}"))
            raise NoCurrentSessionError(_NO_SESSION.format(name=name))
        session = scope.session
        return session if session is not None else scope.get()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            # Private and special names are not forwarded, so introspection (copy, pickle,
            # asyncio.iscoroutinefunction, ...) sees a plain object instead of an error.
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self._current(name), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._current(name), name, value)

    async def __aenter__(self) -> NoReturn:
        raise TypeError(_NOT_A_CONTEXT_MANAGER)

    async def __aexit__(self, *exc_info: object) -> None:
        return None  # never entered: __aenter__ raises

    def __contains__(self, instance: object) -> bool:
        return instance in self._current("__contains__")

    def __iter__(self) -> Iterator[object]:
        return iter(self._current("__iter__"))

    def __repr__(self) -> str:
        return f"<SessionFactory of {self._db!r}>"


def _not_configured(used: str) -> str:
    return (
        f"No database is configured on this AsyncBind, and '{used}' needs one. "
        "Did you forget to call 'db.init_app(app)'? Otherwise pass a URL, "
        "AsyncBind('postgresql://...', binds={...}), or call db.configure(url, binds={...})."
    )


_NO_SESSION = (
    "'db.session.{name}' was used outside of any request, app context or task scope, so there "
    "is no current session. In a request handled with an integration (db.init_app(app) for "
    "Quart, AsyncBindMiddleware for Starlette, the session dependency for FastAPI) it is the "
    "request's session. Elsewhere open a scope, 'async with db.scope(): ...', inside which "
    "db.session is this task's own session; or use a session of your own, "
    "'async with db.session() as session: ...'."
)

_NOT_A_CONTEXT_MANAGER = (
    "'async with db.session' opens nothing: db.session is the current request's or scope's "
    "session, used as one (db.session.add(...), await db.session.commit()). For a session of "
    "your own, call it: 'async with db.session() as session: ...'; for this task's scope, "
    "'async with db.scope() as session: ...'."
)

_SCOPE_ENDED = (
    "'db.session' was used in a scope that has ended: this task inherited the session of a "
    "request or 'db.scope()' block that is over, and its session is closed. Open a scope in the "
    "task itself, 'async with db.scope(): ...', or use 'async with db.session() as session: ...'."
)
