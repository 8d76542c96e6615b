"""Engines taken out of service: disposed once the sessions using them are done.

A bind removed at run time (``db.remove_bind()``) and a tenant's engine evicted from its group
stop getting new work at once, but a session may still hold one of their connections, in the
middle of a transaction. :class:`Retirements` waits until every connection is back in the pool,
then disposes the engine, so that each connection is closed properly and none is cut off mid-use.

"In use" is what the pool counts as checked out (:meth:`sqlalchemy.pool.QueuePool.checkedout`):
a session holds a connection from its first statement until its transaction ends. A pool that
keeps no count (``NullPool``, ``StaticPool``) holds no idle connections worth waiting for, so its
engine is disposed at once; a checked-out connection of a disposed pool is still closed when it
is returned.

The count is looked at after every check-in and every :data:`RECHECK_INTERVAL` seconds. The pool
fires its ``checkin`` event before it counts the connection back, and a connection it does not
keep (an overflow connection, the pool being full) is closed in between, over the network on
asyncpg and aiosqlite; SQLAlchemy documents no event for the end of that close (``close`` comes
before it). The look after the check-in then finds the connection still counted, and no event
comes later: the periodic look is what sees the count drop, whatever order a pool fires its
events and updates its count in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["RECHECK_INTERVAL", "Retirements", "in_use"]

logger = logging.getLogger("asyncbind")

#: Seconds between two looks at the pool of an engine waiting for its connections (besides the
#: look after each check-in): how late, at most, a retirement notices a connection that its pool
#: closed as it took it back.
RECHECK_INTERVAL = 0.1


def in_use(engine: AsyncEngine) -> int:
    """How many connections of ``engine``'s pool are checked out (0 for a pool that keeps no
    count)."""
    checkedout = getattr(engine.sync_engine.pool, "checkedout", None)
    return int(checkedout()) if checkedout is not None else 0


async def _idle(engine: AsyncEngine, done: asyncio.Event) -> None:
    """Wait until no connection of ``engine`` is checked out, or until ``done`` is set."""
    loop = asyncio.get_running_loop()

    def check() -> None:
        if not in_use(engine):
            done.set()

    def returned(*_: Any) -> None:
        # The pool counts the connection as back only after its checkin event: look just after.
        loop.call_soon(check)

    target = engine.sync_engine
    sa.event.listen(target, "checkin", returned)
    try:
        check()
        while not done.is_set():
            try:
                async with asyncio.timeout(RECHECK_INTERVAL):
                    await done.wait()
            except TimeoutError:
                check()
    finally:
        sa.event.remove(target, "checkin", returned)


class Retirements:
    """The engines being retired by one :class:`~asyncbind.AsyncBind`, each in a task that waits
    for its connections to come back and then disposes it."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        # Each task, with the event that ends its wait (set when the engine is idle, or by
        # dispose_now()).
        self._tasks: dict[asyncio.Task[None], asyncio.Event] = {}

    def retire(self, engine: AsyncEngine, name: str) -> asyncio.Task[None] | None:
        """Dispose ``engine`` once none of its connections is in use, in a task of its own (so
        that it finishes even if whoever asked is cancelled). Returns the task, or None when
        there is no running event loop, where the idle connections are let go unclosed."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            engine.sync_engine.dispose(close=False)
            return None
        done = asyncio.Event()
        task = loop.create_task(self._retire(engine, name, done), name=f"asyncbind retire {name}")
        self._tasks[task] = done
        task.add_done_callback(self._done)
        return task

    @staticmethod
    async def _retire(engine: AsyncEngine, name: str, done: asyncio.Event) -> None:
        await _idle(engine, done)
        await engine.dispose()
        logger.info("disposed the engine of %s", name)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("disposing a retired engine failed: %r", task.exception())

    @property
    def pending(self) -> int:
        """How many retired engines still wait for their connections."""
        return len(self._tasks)

    async def dispose_now(self) -> None:
        """Dispose every engine still waiting, without waiting for its connections any longer
        (at shut-down, when no session should be running)."""
        tasks = list(self._tasks)
        for task in tasks:
            self._tasks[task].set()
        if tasks:
            await asyncio.wait(tasks)  # if this is cancelled, the disposals go on
