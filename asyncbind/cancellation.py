"""Cancellations: cleanup that a cancellation does not cut short, and cancellations that land in
asyncbind's connector or in a pool returning a connection, each absorbed there, so that a
cancelled task leaves nothing behind and nothing is reported.

- Cleanup that a cancellation must not cut short (disposing engines; closing a session on
  several connections, or from a task being cancelled already: see :mod:`asyncbind.tasksafety`)
  runs in a task of its own, :func:`run_to_completion`: a cancellation of the caller is raised
  once it has finished.

- A connection attempt whose caller is cancelled is not interrupted mid-handshake: drivers do not
  clean up after that (asyncpg leaves a future whose error nobody retrieves, reported as "Future
  exception was never retrieved"; aiomysql its socket). The attempt finishes by itself and what
  it made is dropped; the caller is cancelled at once.
- A pool returning a connection resets it (a rollback) and may close it (an overflow connection,
  or on dispose). SQLAlchemy's pool logs whatever a reset or close raises as an ERROR, a
  cancellation included. A cancellation that lands there drops the connection (its state is
  unknown, so it is never reused) and is handed back to the task: raised at the task's next
  await, outside the pool. A reset that finds its connection lost (the server or the network
  ended it) drops it just as quietly: nobody waits for a reset's outcome.

asyncbind therefore resets returned connections itself, through the pool's documented ``reset``
event (SQLAlchemy's own reset is turned off with ``pool_reset_on_return=None``), unless the bind
chooses its own ``pool_reset_on_return`` or ``pool``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

__all__ = [
    "close_quietly",
    "finish_if_cancelled",
    "raise_handed_back",
    "reset_listener",
    "resets_returned_connections",
    "run_to_completion",
]

_T = TypeVar("_T")

#: Seconds a connection attempt whose caller was cancelled may take to finish by itself before
#: it is cancelled after all (against a server that never answers, say).
ABANDONED_CONNECT_TIMEOUT = 10.0
#: Connection attempts whose caller was cancelled, kept until they finish.
_ABANDONED: set[asyncio.Task[Any]] = set()


async def run_to_completion(coro: Coroutine[Any, Any, _T], name: str | None = None) -> _T:
    """Await ``coro`` in a task of its own (called ``name``) that a cancellation of the caller
    does not stop.

    For cleanup (closing a session, disposing engines): the caller does not return before it has
    finished, and a cancellation received meanwhile is raised afterwards, in place of its result
    (an error of the cleanup is raised as it is). The task itself stays cancellable, so that the
    timeouts of the cleanup's own I/O (a rollback or a close bounded by the bind's
    ``statement_timeout``) still cut it short.

    The caller awaits a future that the task settles in its last step, not the task itself: a
    cancellation of the caller then cancels that future only, and the caller resumes in the
    loop's next turn once the cleanup has ended (behind :func:`asyncio.shield` it would resume a
    turn later, one turn more per session closed).
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[_T] = loop.create_future()
    task = loop.create_task(_settling(coro, outcome), name=name)
    task.add_done_callback(functools.partial(_ended, coro, outcome))
    try:
        return await outcome
    except asyncio.CancelledError as exc:
        cancelled = exc
    if not outcome.cancelled():
        # The cleanup ended as the caller was cancelled, before the caller resumed.
        outcome.exception()  # retrieved: the cancellation is raised in place of the outcome
        raise cancelled
    # The caller was cancelled (or the cleanup itself was): wait for the cleanup to end, then
    # raise the cancellation, or the cleanup's error.
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
        else:
            raise cancelled


async def _settling(coro: Coroutine[Any, Any, _T], outcome: asyncio.Future[_T]) -> None:
    """Await ``coro`` and settle ``outcome`` with its result or error, unless the caller
    waiting for it was cancelled meanwhile: the error is then the task's own, for the caller
    to retrieve once it has waited for the task."""
    try:
        result = await coro
    except asyncio.CancelledError:
        outcome.cancel()
        raise
    except Exception as exc:
        if outcome.done():
            raise  # the caller was cancelled: it waits for this task and gets the error here
        outcome.set_exception(exc)
    else:
        if not outcome.done():
            outcome.set_result(result)


def _ended(
    coro: Coroutine[Any, Any, Any], outcome: asyncio.Future[Any], task: asyncio.Task[Any]
) -> None:
    """Done callback of the cleanup's task: one cancelled before its first step never ran
    ``coro`` nor settled ``outcome``. Closed, ``coro`` is not reported as never awaited."""
    if not outcome.done():
        coro.close()
        outcome.cancel()


async def finish_if_cancelled(
    attempt: Coroutine[Any, Any, Any], drop: Callable[[Any], None]
) -> Any:
    """Await ``attempt`` (a driver's connect); if the caller is cancelled meanwhile, let it
    finish by itself (within :data:`ABANDONED_CONNECT_TIMEOUT`) and ``drop`` the connection it
    makes."""
    task = asyncio.ensure_future(attempt)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done():
            _discard(task, drop)
        else:
            _ABANDONED.add(task)
            deadline = task.get_loop().call_later(ABANDONED_CONNECT_TIMEOUT, task.cancel)

            def finished(done: asyncio.Task[Any]) -> None:
                deadline.cancel()
                _discard(done, drop)

            task.add_done_callback(finished)
        raise


def _discard(attempt: asyncio.Task[Any], drop: Callable[[Any], None]) -> None:
    _ABANDONED.discard(attempt)
    # Reading the exception retrieves it: an attempt that failed alone is no error to report.
    if not attempt.cancelled() and attempt.exception() is None:
        drop(attempt.result())


def _being_cancelled() -> asyncio.Task[Any] | None:
    """The current task if a cancellation of it is under way (rather than a CancelledError
    from a future that something else cancelled)."""
    task = asyncio.current_task()
    return task if task is not None and task.cancelling() else None


def _hand_back(task: asyncio.Task[Any], cancelled: asyncio.CancelledError) -> None:
    """Raise ``cancelled`` in ``task`` at its next await instead of here. The task's count of
    cancellation requests stays as it was, so that asyncio.timeout() still recognises its own.
    The operation that returned the connection raises it before it returns
    (:func:`raise_handed_back`)."""
    task.uncancel()
    task.cancel(cancelled.args[0] if cancelled.args else None)


async def raise_handed_back() -> None:
    """Raise here a cancellation that a pool handed back to the current task (a reset or close
    it cut short, see :func:`reset_listener`) during the operation that has just returned.

    asyncio raises a cancellation requested of a running task at the task's next suspension
    only. An operation that returned into the end of an ``asyncio.timeout()`` block without
    one would let the block end as if nothing happened, and its ``uncancel()`` does not withdraw
    the pending cancellation (Python 3.11 and 3.12): the task's next await after the block
    would be cancelled with nobody cancelling it. Raised here, it is the block's own: its
    ``TimeoutError``. When no cancellation is under way this is one call, no suspension.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        await asyncio.sleep(0)  # a pending cancellation is raised at this suspension


def close_quietly(close: Callable[[Any], None]) -> Callable[[Any], None]:
    """``close`` (a dialect's ``do_close``, which drops the connection when it fails) that hands a
    cancellation back to the task instead of raising it into the pool."""

    def call(dbapi_connection: Any) -> None:
        try:
            close(dbapi_connection)
        except asyncio.CancelledError as cancelled:
            task = _being_cancelled()
            if task is None:
                raise
            _hand_back(task, cancelled)

    return call


def resets_returned_connections(engine_options: Mapping[str, Any]) -> bool:
    """Whether asyncbind resets the connections returned to a bind's pool (the bind chose neither
    its own ``pool_reset_on_return`` nor its own ``pool``)."""
    return "pool_reset_on_return" not in engine_options and "pool" not in engine_options


def reset_listener(
    dialect: sa.Dialect,
    drop: Callable[[Any], None],
    timed_out: Callable[[BaseException], bool],
    *,
    discard: bool = True,
) -> Callable[[Any, ConnectionPoolEntry, PoolResetState], None]:
    """A pool ``reset`` listener that rolls back each connection returned to the pool, as
    SQLAlchemy's reset on return does, with ``dialect.do_rollback`` (asyncbind's, bounded in time
    when the bind has a ``statement_timeout``).

    A rollback cut short by a cancellation, a timeout (``timed_out``) or the loss of the
    connection drops the connection quietly (nobody waits for the reset's outcome; the pool opens
    a new connection when it needs one), and a cancellation is handed back to the task. Any other
    failure is raised, and the pool logs it. With ``discard=False`` (an in-memory database, whose
    one connection is the database) a rollback cut short leaves the connection as it is: the
    rollback goes on in the driver's thread, and what comes next waits for it.
    """

    def drop_it(dbapi_connection: Any, record: ConnectionPoolEntry, why: BaseException) -> None:
        if discard:
            drop(dbapi_connection)
            record.invalidate(why)  # never handed out again

    def reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
        if state.terminate_only or not state.asyncio_safe or state.transaction_was_reset:
            return  # the pool drops it, or may not do I/O here, or nothing is left to roll back
        try:
            dialect.do_rollback(dbapi_connection)
        except asyncio.CancelledError as cancelled:
            task = _being_cancelled()
            if task is None and not timed_out(cancelled):
                raise
            drop_it(dbapi_connection, record, cancelled)
            if task is not None:
                _hand_back(task, cancelled)
        except Exception as exc:
            if not dialect.is_disconnect(exc, dbapi_connection, None):  # type: ignore[arg-type]
                raise
            drop_it(dbapi_connection, record, exc)

    return reset
