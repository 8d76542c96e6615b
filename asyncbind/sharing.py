"""Refusing a session used by two tasks at once.

An :class:`~sqlalchemy.ext.asyncio.AsyncSession` must not be used by two tasks concurrently
(``asyncio.gather`` over one session is the classic case). SQLAlchemy then fails only when the
timing is unlucky, with ``IllegalStateChangeError`` or a leaked connection. The sessions asyncbind
makes note the task that has an operation in flight and refuse another task that starts one
meanwhile with :class:`~asyncbind.SessionSharedError`, every time, before anything is sent.

Handing a session from one task to the next (one after the other) stays allowed: frameworks do it,
for example Starlette runs a streaming body in a task of its own. ``close()`` from another task
waits for the operation in flight to finish, then closes: cleanup must not leak the connection.

The bookkeeping sits in the *sync* session that the AsyncSession drives: every operation of an
AsyncSession is one call of a sync Session method, run in SQLAlchemy's greenlet from the first
to the last of its awaits. Marking the operation there costs one plain function call, where
wrapping the coroutines would add a frame to every resumption of every await.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import greenlet
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncSession

from .exceptions import SessionSharedError

__all__ = ["guarded_session_class", "guarded_sync_session_class", "is_guarded"]

_AS = TypeVar("_AS", bound=AsyncSession)
_S = TypeVar("_S", bound=sa_orm.Session)

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

_async_classes: dict[type[AsyncSession], type[AsyncSession]] = {}
_sync_classes: dict[type[sa_orm.Session], type[sa_orm.Session]] = {}


def _task_name(task: asyncio.Task[Any] | None) -> str:
    return "<no task>" if task is None else task.get_name()


def _guard(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    # The operation in flight is known by its greenlet: SQLAlchemy runs each AsyncSession
    # operation in a greenlet of its own, and calls nested in it (a get's autoflush) share it.
    # Comparing greenlets is ten times cheaper than asking asyncio for the current task, which is
    # done once per operation, for the error message.
    getcurrent = greenlet.getcurrent
    current_task = asyncio.current_task

    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        owner = self._asyncbind_greenlet
        if owner is None:
            try:
                task = current_task()
            except RuntimeError:  # no event loop: plain sync use
                return method(self, *args, **kwargs)
            self._asyncbind_greenlet = getcurrent()
            self._asyncbind_task = task
            self._asyncbind_operation = name
            try:
                return method(self, *args, **kwargs)
            finally:
                self._asyncbind_greenlet = self._asyncbind_task = None
                waiter = self._asyncbind_waiter
                if waiter is not None:
                    self._asyncbind_waiter = None
                    if not waiter.done():
                        waiter.set_result(None)
        if owner is getcurrent():  # an operation calling another one
            return method(self, *args, **kwargs)
        raise SessionSharedError(
            f"{name}()",
            task=_task_name(current_task()),
            owner=_task_name(self._asyncbind_task),
            running=f"{self._asyncbind_operation}()",
        )

    return guarded


def guarded_sync_session_class(base: type[_S]) -> type[_S]:
    """A subclass of ``base`` (a sync Session class) that notes the task of the operation in
    flight and refuses another task meanwhile."""
    if getattr(base, "_asyncbind_guarded", False):
        return base
    guarded = _sync_classes.get(base)
    if guarded is None:
        namespace: dict[str, Any] = {
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            "_asyncbind_guarded": True,
            "_asyncbind_greenlet": None,
            "_asyncbind_task": None,
            "_asyncbind_operation": None,
            "_asyncbind_waiter": None,
        }
        for name in _OPERATIONS:
            if hasattr(base, name):
                namespace[name] = _guard(name, getattr(base, name))
        guarded = _sync_classes[base] = type(base.__name__, (base,), namespace)
    return guarded  # type: ignore[return-value]


async def _close_when_free(session: AsyncSession) -> None:
    """Wait until no other task has an operation in flight on ``session``."""
    sync = session.sync_session
    # An operation in flight is another task's: this one is busy closing.
    while getattr(sync, "_asyncbind_greenlet", None) is not None:
        waiter = sync._asyncbind_waiter  # type: ignore[attr-defined]
        if waiter is None:
            waiter = sync._asyncbind_waiter = asyncio.get_running_loop().create_future()  # type: ignore[attr-defined]
        await asyncio.shield(waiter)


def guarded_session_class(base: type[_AS]) -> type[_AS]:
    """A subclass of ``base`` (an AsyncSession class) whose ``close()`` from another task waits
    for the operation in flight instead of breaking it; the refusal itself happens in the sync
    session (:func:`guarded_sync_session_class`)."""
    if is_guarded(base):
        return base
    guarded = _async_classes.get(base)
    if guarded is None:

        async def close(self: AsyncSession) -> None:
            await _close_when_free(self)
            await base.close(self)

        namespace: dict[str, Any] = {
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            "_asyncbind_guarded": True,
            "close": functools.wraps(base.close)(close),
        }
        guarded = _async_classes[base] = type(base.__name__, (base,), namespace)
    return guarded  # type: ignore[return-value]


def is_guarded(cls: type[Any]) -> bool:
    """Whether sessions of ``cls`` refuse use by two tasks at once."""
    return bool(getattr(cls, "_asyncbind_guarded", False))
