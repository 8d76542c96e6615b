"""Closing a connection that belongs to another event loop than the running one.

A pool's connections belong to the loop that made them. A worker that runs each job with
``asyncio.run()``, or a test suite with a fresh loop per test, disposes in one loop connections
that an earlier loop made, and that loop is usually closed by then. Their sockets cannot be closed
through it, and left to the garbage collector they stay open on the server (a suite can run the
server out of connections) and are reported later as unclosed or "Event loop is closed".

So each connection's loop is remembered when it is made, and a close from any other loop:

- shuts the socket down at once (``TransportSocket.shutdown()``, which asyncio allows), so the
  server lets go of the connection now;
- if that loop is closed, releases the transport here: what the loop would have run, had it been
  open, runs in this one (:func:`asyncbind.internals.release_transport`); the driver's
  connection is then marked closed;
- if that loop is still open, asks it to drop the connection when it next runs.

Drivers whose connections belong to no loop (aiosqlite's run in a thread of their own) and those
asyncbind does not know are closed as SQLAlchemy closes them.

A bind's pool used from a second loop refuses, with
:class:`~asyncbind.exceptions.WrongEventLoopError`: see :class:`asyncbind.internals.BindPool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from . import internals

__all__ = [
    "close_in_any_loop",
    "closes_across_loops",
    "dispose_other_loops_pools",
    "dispose_running_loops_pools",
    "remember_loop",
]

#: The loop each driver connection was made in.
_LOOPS: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


def closes_across_loops(driver: str) -> bool:
    """Whether connections of ``driver`` belong to an event loop and can be closed from another
    (asyncbind knows their transport)."""
    return internals.has_transport(driver)


def remember_loop(dbapi_connection: Any, _record: Any) -> None:
    """A pool ``connect`` listener: remember the event loop a new connection is made in."""
    driver_connection = getattr(dbapi_connection, "driver_connection", None)
    if driver_connection is not None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to remember
            _LOOPS[driver_connection] = asyncio.get_running_loop()


def close_in_any_loop(
    close: Callable[[Any], None], drop: Callable[[Any], None], driver: str
) -> Callable[[Any], None]:
    """``close`` (a dialect's ``do_close``) for a connection of the running loop; a connection
    of another loop is closed without that loop (see the module's docstring).

    ``drop`` closes a connection at once, with no goodbye to the server.
    """
    if not closes_across_loops(driver):
        return close

    def close_anywhere(dbapi_connection: Any) -> None:
        driver_connection = getattr(dbapi_connection, "driver_connection", None)
        owner = None if driver_connection is None else _LOOPS.get(driver_connection)
        if owner is None or owner is _running_loop():
            close(dbapi_connection)
            return
        transport = internals.transport_of(driver, driver_connection)
        if transport is not None:
            _shut_down(transport)
        if owner.is_closed():
            if transport is not None:
                internals.release_transport(transport)
            drop(dbapi_connection)  # only marks it closed: its transport is closed already
        else:
            owner.call_soon_threadsafe(drop, dbapi_connection)

    return close_anywhere


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _shut_down(transport: asyncio.Transport) -> None:
    """End ``transport``'s connection at the socket level, so that the server sees its end now."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # not connected any more
            sock.shutdown(socket.SHUT_RDWR)


async def dispose_other_loops_pools(engines: Iterable[AsyncEngine]) -> bool:
    """Dispose each engine whose pool belongs to another event loop than the running one, so
    that it serves this loop; for code that moves between loops on purpose (a test suite whose
    tables are made in one loop and whose tests run in others). Returns whether it disposed any.
    """
    running = asyncio.get_running_loop()
    disposed = False
    for engine in engines:
        pool = engine.sync_engine.pool
        if isinstance(pool, internals.BindPool) and pool.event_loop not in (None, running):
            await engine.dispose()
            disposed = True
    return disposed


async def dispose_running_loops_pools(engines: Iterable[AsyncEngine]) -> None:
    """Dispose each engine whose pool belongs to the running event loop, so that it belongs to
    no loop and the next loop to use it, whichever, can take it: the other half of
    :func:`dispose_other_loops_pools`, for a loop that hands pools back before it ends."""
    running = asyncio.get_running_loop()
    for engine in engines:
        pool = engine.sync_engine.pool
        if isinstance(pool, internals.BindPool) and pool.event_loop is running:
            await engine.dispose()
