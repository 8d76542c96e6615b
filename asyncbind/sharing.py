"""Refusing a session used by two tasks at once.

An :class:`~sqlalchemy.ext.asyncio.AsyncSession` must not be used by two tasks concurrently
(``asyncio.gather`` over one session is the classic case). SQLAlchemy then fails only when the
timing is unlucky, with ``IllegalStateChangeError`` or a leaked connection. The sessions asyncbind
makes note the task that has an operation in flight and refuse another task that starts one
meanwhile with :class:`~asyncbind.SessionSharedError`, every time, before anything is sent.

Handing a session from one task to the next (one after the other) stays allowed: frameworks do it,
for example Starlette runs a streaming body in a task of its own. ``close()`` and ``reset()`` from
another task wait for the operation in flight to finish, then close: cleanup must not leak the
connection.

The bookkeeping sits in the *sync* session that the AsyncSession drives: every operation of an
AsyncSession is one call of a sync Session method, run in SQLAlchemy's greenlet from the first
to the last of its awaits. Marking the operation there costs one plain function call and one
attribute, where wrapping the coroutines would add a frame to every resumption of every await.
A cleanup that has to wait does so from inside that greenlet, with SQLAlchemy's own ``await_``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import greenlet
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm as sa_orm
from sqlalchemy import util as sa_util

from .exceptions import SessionSharedError

__all__ = ["guarded_session_class", "is_guarded"]

_S = TypeVar("_S", bound=sa_orm.Session)

#: SQLAlchemy 2.1 renamed ``await_only`` to ``await_``.
_await: Callable[[Any], Any] = getattr(sa_util, "await_", None) or sa_util.await_only

# The sync Session methods that AsyncSession's operations call (directly or through
# greenlet_spawn), plus the ones without I/O that still change the session's state.
_OPERATIONS = (
    "execute",
    "scalar",
    "scalars",
    "get",
    "get_one",
    "merge",
    "merge_all",
    "delete",
    "delete_all",
    "flush",
    "refresh",
    "commit",
    "rollback",
    "close",
    "reset",
    "invalidate",
    "connection",
    "add",
    "add_all",
    "expire",
    "expire_all",
    "expunge",
    "expunge_all",
)
#: Cleanups: called from another task while an operation is in flight, they wait for it.
_CLEANUPS = frozenset({"close", "reset"})

_classes: dict[type[sa_orm.Session], type[sa_orm.Session]] = {}


def _task_name(task: asyncio.Task[Any] | None) -> str:
    return "<no task>" if task is None else task.get_name()


def _refuse(session: Any, name: str, running: tuple[Any, asyncio.Task[Any], str]) -> None:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    raise SessionSharedError(
        f"{name}()", task=_task_name(task), owner=_task_name(running[1]), running=f"{running[2]}()"
    )


def _wait_until_free(session: Any, name: str) -> None:
    """Wait, from the greenlet of a cleanup, until the operation in flight is over."""
    while (running := session._asyncbind_running) is not None:
        waiter = session._asyncbind_waiter
        if waiter is None:
            waiter = session._asyncbind_waiter = asyncio.get_running_loop().create_future()
        try:
            _await(asyncio.shield(waiter))
        except sa_exc.MissingGreenlet:  # the sync method itself, called from a coroutine
            _refuse(session, name, running)


def _wake(session: Any) -> None:
    """Wake the cleanups waiting for the operation that just ended."""
    waiter = session._asyncbind_waiter
    session._asyncbind_waiter = None
    if not waiter.done():
        waiter.set_result(None)


def _guard(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    # The operation in flight is known by its greenlet: SQLAlchemy runs each AsyncSession
    # operation in a greenlet of its own, and calls nested in it (a get's autoflush) share it.
    # The task is noted once per operation, for the error message.
    getcurrent = greenlet.getcurrent
    current_task = asyncio.current_task
    cleanup = name in _CLEANUPS

    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        running = self._asyncbind_running
        if running is not None:
            if running[0] is getcurrent():  # an operation calling another one
                return method(self, *args, **kwargs)
            if not cleanup:
                _refuse(self, name, running)
            _wait_until_free(self, name)
        try:
            task = current_task()
        except RuntimeError:  # no event loop: plain sync use
            return method(self, *args, **kwargs)
        self._asyncbind_running = (getcurrent(), task, name)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._asyncbind_running = None
            if self._asyncbind_waiter is not None:
                _wake(self)

    return guarded


def guarded_session_class(base: type[_S]) -> type[_S]:
    """A subclass of ``base`` (a sync Session class, an AsyncSession's ``sync_session_class``)
    that notes the task of the operation in flight and refuses another task meanwhile."""
    if is_guarded(base):
        return base
    guarded = _classes.get(base)
    if guarded is None:
        namespace: dict[str, Any] = {
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            "_asyncbind_guarded": True,
            "_asyncbind_running": None,
            "_asyncbind_waiter": None,
        }
        for name in _OPERATIONS:
            if hasattr(base, name):
                namespace[name] = _guard(name, getattr(base, name))
        guarded = _classes[base] = type(base.__name__, (base,), namespace)
    return guarded  # type: ignore[return-value]


def is_guarded(cls: type[Any]) -> bool:
    """Whether sessions of ``cls`` refuse use by two tasks at once."""
    return bool(getattr(cls, "_asyncbind_guarded", False))
