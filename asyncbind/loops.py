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
  open, runs in this one (see :func:`_release`); the driver's connection is then marked closed;
- if that loop is still open, asks it to drop the connection when it next runs.

Drivers whose connections belong to no loop (aiosqlite's run in a thread of their own) and those
asyncbind does not know are closed as SQLAlchemy closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["close_in_any_loop", "remember_loops", "transport_of"]

#: The loop each driver connection was made in.
_LOOPS: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()

#: Each driver connection's transport. No driver offers it publicly: these are private
#: attributes, kept here; tests/test_loops.py fails if a driver renames them.
_TRANSPORTS: dict[str, Callable[[Any], Any]] = {
    "asyncpg": lambda connection: connection._transport,
    "aiomysql": lambda connection: connection._writer and connection._writer.transport,
}


def transport_of(driver: str, driver_connection: Any) -> asyncio.Transport | None:
    """The transport of ``driver``'s connection, or None if unknown or already closed."""
    transport_getter = _TRANSPORTS.get(driver)
    if transport_getter is None:
        return None
    transport: asyncio.Transport | None = transport_getter(driver_connection)
    return transport


def remember_loops(engine: sa.Engine) -> None:
    """Remember the event loop each new connection of ``engine`` is made in."""
    if engine.dialect.driver not in _TRANSPORTS:
        return

    def connected(dbapi_connection: Any, _record: Any) -> None:
        driver_connection = getattr(dbapi_connection, "driver_connection", None)
        if driver_connection is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to remember
                _LOOPS[driver_connection] = asyncio.get_running_loop()

    sa.event.listen(engine, "connect", connected)


def close_in_any_loop(
    close: Callable[[Any], None], drop: Callable[[Any], None], driver: str
) -> Callable[[Any], None]:
    """``close`` (a dialect's ``do_close``) for a connection of the running loop; a connection
    of another loop is closed without that loop (see the module's docstring).

    ``drop`` closes a connection at once, with no goodbye to the server.
    """
    if driver not in _TRANSPORTS:
        return close

    def close_anywhere(dbapi_connection: Any) -> None:
        driver_connection = getattr(dbapi_connection, "driver_connection", None)
        owner = None if driver_connection is None else _LOOPS.get(driver_connection)
        if owner is None or owner is _running_loop():
            close(dbapi_connection)
            return
        transport = transport_of(driver, driver_connection)
        if transport is not None:
            _shut_down(transport)
        if owner.is_closed():
            if transport is not None:
                _release(transport)
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


def _release(transport: asyncio.Transport) -> None:
    """Close ``transport``, whose event loop is closed, without that loop.

    ``abort()`` marks the transport closed, then schedules its ``connection_lost()`` callback
    on its loop, which a closed loop refuses ("Event loop is closed"). That callback tells the
    protocol and closes the socket; it runs here instead. It is private to asyncio's transports
    (tests/test_loops.py fails if asyncio renames it); a transport without it keeps its socket,
    already shut down, until the garbage collector closes it.
    """
    with contextlib.suppress(RuntimeError):
        transport.abort()
    connection_lost = getattr(transport, "_call_connection_lost", None)
    sock = transport.get_extra_info("socket")
    if connection_lost is not None and sock is not None and sock.fileno() != -1:
        connection_lost(None)
