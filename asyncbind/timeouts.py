"""Driver calls that cannot wait on the network for ever.

- ``statement_timeout`` bounds each statement, commit and rollback on the client side, so a
  server that stops answering (not only one that is slow) is abandoned. Statements are bounded
  through SQLAlchemy's ``do_execute`` events (:func:`statement_listeners`): the listener runs the
  dialect's own cursor call itself, within the time. Commits and rollbacks have no event; their
  dialect methods are wrapped (:func:`bounded`).
- A pre-ping past the statement (or connect) timeout counts as a dead connection, so the pool
  opens a new one (:func:`bounded_ping`).
- Closing a connection is bounded in any case (:func:`bounded_close`); the closes of one pool's
  ``dispose()`` share one such bound (:func:`sharing_close_timeout`).

A connection abandoned in any of these ways is dropped on the spot (:mod:`asyncbind.closing`):
the server has stopped answering, so waiting for it to acknowledge a goodbye would only make the
error late. The server is then told to end that connection from another one
(:mod:`asyncbind.stopping`), so that the statement does not run on; a COMMIT or ROLLBACK is left
to end by itself, which ending its connection would not make sooner. On SQLite the connection
stays open for :func:`asyncbind.stopping.interrupt_listener`, which interrupts the statement.
The cancellation that cut a statement, commit or rollback short is marked;
:func:`error_listener` turns it into :class:`~asyncbind.exceptions.StatementTimeoutError` and has
SQLAlchemy discard the connection, and :func:`timed_out` recognises it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext

from .config import BindKey
from .exceptions import StatementTimeoutError

__all__ = [
    "CLOSE_TIMEOUT",
    "STATEMENT_EVENTS",
    "bounded",
    "bounded_close",
    "bounded_ping",
    "error_listener",
    "sharing_close_timeout",
    "statement_listeners",
    "timed_out",
]

#: Seconds a connection may take to close politely before it is dropped, when the bind sets no
#: timeout of its own.
CLOSE_TIMEOUT = 10.0
#: The attribute that marks a cancellation as a timeout: (the timeout, what it cut short).
_MARK = "_asyncbind_timeout"
#: SQLAlchemy's events that run a statement's cursor call, each a dialect method of that name.
STATEMENT_EVENTS = ("do_execute", "do_executemany", "do_execute_no_params")

OnExpiry = Callable[[tuple[Any, ...], asyncio.CancelledError], Any]


class _Deadline:
    """Cancels the current task if a driver call runs past its time."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


def _within(method: Callable[..., Any], timeout: float, on_expiry: OnExpiry) -> Callable[..., Any]:
    """``method`` (a blocking-looking driver call run in SQLAlchemy's greenlet) cut short after
    ``timeout`` seconds; ``on_expiry(args, cancellation)`` then decides what happens."""

    def call(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        if task is None:
            return method(*args, **kwargs)
        deadline = _Deadline(task)
        handle = task.get_loop().call_later(timeout, deadline.fire)
        try:
            return method(*args, **kwargs)
        except asyncio.CancelledError as exc:
            if not deadline.fired:
                raise
            task.uncancel()
            return on_expiry(args, exc)
        finally:
            handle.cancel()

    return call


def _abandon(
    timeout: float, what: str, drop: Callable[[Any], None], connection_of: Callable[[Any], Any]
) -> OnExpiry:
    """What happens when ``what`` ("a statement", "a commit") outlives ``timeout``: its connection
    (``connection_of(args)``) is dropped, and the cancellation, marked, goes on to SQLAlchemy."""

    def expire(args: tuple[Any, ...], exc: asyncio.CancelledError) -> Any:
        setattr(exc, _MARK, (timeout, what))
        # The timeout is the error to report; SQLAlchemy discards the connection anyway.
        with contextlib.suppress(Exception):
            drop(connection_of(args))
        raise exc

    return expire


def _statement_connection(args: tuple[Any, ...]) -> Any:
    """The DBAPI connection of a ``do_execute`` event's call, from its execution context (the
    last argument)."""
    return args[-1].root_connection.connection.dbapi_connection


def statement_listeners(
    dialect: sa.Dialect,
    timeout: float,
    drop: Callable[[Any], None],
    methods: Mapping[str, Callable[..., Any]] = MappingProxyType({}),
) -> dict[str, Callable[..., bool]]:
    """A listener for each of :data:`STATEMENT_EVENTS` that runs ``dialect``'s own cursor call
    (or the one ``methods`` gives for that event) within ``timeout`` and tells SQLAlchemy it did
    (returns True).

    A listener that returns True ends the event, so a ``do_execute`` listener added to the engine
    after these never runs.
    """
    expire = _abandon(timeout, "a statement", drop, _statement_connection)

    def listener(run: Callable[..., Any]) -> Callable[..., bool]:
        def execute(*args: Any) -> bool:
            run(*args)
            return True

        return execute

    return {
        name: listener(_within(methods.get(name) or getattr(dialect, name), timeout, expire))
        for name in STATEMENT_EVENTS
    }


def bounded(
    method: Callable[[Any], None], timeout: float, what: str, drop: Callable[[Any], None]
) -> Callable[[Any], None]:
    """``method`` (a dialect's ``do_commit`` or ``do_rollback``, ``what`` being "a commit" or
    "a rollback") abandoned after ``timeout``, its connection dropped."""
    return _within(method, timeout, _abandon(timeout, what, drop, lambda args: args[0]))


def bounded_ping(
    ping: Callable[[Any], bool], timeout: float, drop: Callable[[Any], None]
) -> Callable[[Any], bool]:
    """``ping`` (a dialect's ``do_ping``) that, past ``timeout``, drops the connection and says it
    is dead, so that the pool opens a new one."""

    def dead(args: tuple[Any, ...], _cancellation: asyncio.CancelledError) -> bool:
        drop(args[0])
        return False

    return _within(ping, timeout, dead)


class _SharedCloseTimeout:
    """One close timeout for several closes: it starts with the first of them, and once it has
    run out (or cut a close short) the closes left get no time at all."""

    __slots__ = ("deadline", "ran_out")

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.ran_out = False

    def left(self, timeout: float) -> float:
        now = asyncio.get_running_loop().time()
        if self.deadline is None:
            self.deadline = now + timeout
        return 0.0 if self.ran_out else self.deadline - now

    def cut_short(self, _args: tuple[Any, ...], _cancellation: asyncio.CancelledError) -> None:
        self.ran_out = True


#: The close timeout that the closes made in the current task now share, if any.
_SHARED_CLOSE_TIMEOUT: ContextVar[_SharedCloseTimeout | None] = ContextVar(
    "asyncbind_shared_close_timeout", default=None
)


@contextlib.contextmanager
def sharing_close_timeout() -> Iterator[None]:
    """Within this block (a pool's ``dispose()``), the closes made by :func:`bounded_close` in the
    current task share one close timeout instead of one each: a server that has stopped answering
    then costs one timeout however many connections are closed, not one per connection."""
    token = _SHARED_CLOSE_TIMEOUT.set(_SharedCloseTimeout())
    try:
        yield
    finally:
        _SHARED_CLOSE_TIMEOUT.reset(token)


def bounded_close(
    close: Callable[[Any], None], timeout: float, drop: Callable[[Any], None]
) -> Callable[[Any], None]:
    """``close`` (a dialect's ``do_close``, which drops the connection when it fails or is
    cancelled: :func:`asyncbind.closing.close_or_drop`) given up after ``timeout``.

    Within :func:`sharing_close_timeout`, what is left of the shared timeout bounds the close;
    once none is left, the connection is dropped (``drop``) at once, with no goodbye."""
    alone = _within(close, timeout, lambda _args, _cancellation: None)

    def close_connection(connection: Any) -> None:
        shared = _SHARED_CLOSE_TIMEOUT.get()
        if shared is None:
            alone(connection)
            return
        left = shared.left(timeout)
        if left > 0:
            _within(close, left, shared.cut_short)(connection)
        else:
            drop(connection)

    return close_connection


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation that cut a statement, commit or rollback short."""
    return hasattr(exc, _MARK)


def error_listener(
    key: BindKey, replica: int = 0, tenant: str | None = None
) -> Callable[[ExceptionContext], BaseException | None]:
    """A ``handle_error`` listener that reports a statement, commit or rollback cut short as
    :class:`StatementTimeoutError` naming bind ``key`` (or its read replica number ``replica``,
    if not 0, or its ``tenant``), its connection discarded."""

    def translate(ctx: ExceptionContext) -> BaseException | None:
        mark = getattr(ctx.original_exception, _MARK, None)
        if mark is None:
            return None
        ctx.is_disconnect = True
        return StatementTimeoutError(key, *mark, replica=replica, tenant=tenant)

    return translate
