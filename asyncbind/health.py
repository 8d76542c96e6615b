"""Health: does every bind answer, and how are its connections doing.

:func:`ping` sends ``SELECT 1`` to every bind at once, each bounded by a timeout, and reports per
bind whether it answered, how long it took and, if not, why, in words with no password. One bad
bind never raises out of it: a health endpoint or a start-up check gets the whole picture.
:func:`pool_status` reads each bind's pool counters without any I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import EMPTY_DICT

from .config import BindKey
from .exceptions import bind_name, first_line
from .registry import bind_config
from .urls import hide_passwords

__all__ = ["BindHealth", "PoolStatus", "ping", "pool_status"]

_PING = sa.text("SELECT 1")


@dataclass(frozen=True, slots=True)
class BindHealth:
    """What :func:`ping` found for one bind."""

    #: The bind key (None for the default bind).
    key: BindKey
    #: Whether the bind answered ``SELECT 1`` within the timeout.
    ok: bool
    #: Seconds from asking to the answer, a new connection included when the pool had none; for a
    #: bind that did not answer, how long it was waited for.
    latency: float
    #: Why the bind did not answer (the error's type and message, never a password); None if ok.
    error: str | None = None
    #: For a bind with read replicas, each replica's answer (its ``replica`` is its number).
    replicas: tuple[BindHealth, ...] = ()
    #: Which replica of the bind this is, from 1; None for the bind's primary.
    replica: int | None = None

    def __str__(self) -> str:
        state = f"ok in {self.latency * 1000:.1f} ms" if self.ok else f"FAILED: {self.error}"
        name = bind_name(self.key, replica=self.replica or 0)
        return "\n".join([f"{name}: {state}", *(f"  {r}" for r in self.replicas)])


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One bind's pool, as SQLAlchemy's pool counts it (see :func:`pool_status`)."""

    key: BindKey
    #: The pool class's name (``AsyncAdaptedQueuePool``, ``NullPool``, ``StaticPool``, ...).
    pool: str
    #: ``pool_size``: connections kept open; None for pools without a size.
    size: int | None
    #: Connections in use by sessions and connections right now.
    checked_out: int | None
    #: Open connections waiting in the pool.
    checked_in: int | None
    #: Connections open beyond ``size`` (negative while fewer than ``size`` are open).
    overflow: int | None
    #: For a bind with read replicas, each replica's pool (its ``replica`` is its number).
    replicas: tuple[PoolStatus, ...] = ()
    #: Which replica of the bind this is, from 1; None for the bind's primary.
    replica: int | None = None


# A timeout per bind, not asyncio.timeout() around the call: a bind that hangs must not cost
# the answers of the others.
async def ping(
    engines: Mapping[BindKey, AsyncEngine],
    *,
    timeout: float = 2.0,  # noqa: ASYNC109
    replicas: Mapping[BindKey, Sequence[AsyncEngine]] = EMPTY_DICT,
) -> dict[BindKey, BindHealth]:
    """Ask every engine for ``SELECT 1`` concurrently; each answer within ``timeout`` seconds.

    Returns a :class:`BindHealth` per bind key, in the order of ``engines``; the engines of a
    bind's read ``replicas`` are asked too, and answer in its ``replicas``. Never raises for a
    bind that fails or hangs; a bind that does not answer in time is reported as such, and the
    connection attempt is cancelled (asyncbind closes it quietly, see
    :mod:`asyncbind.cancellation`).
    """
    if not (isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0):
        raise ValueError(f"timeout= must be a positive number of seconds, not {timeout!r}.")
    async with asyncio.TaskGroup() as group:
        tasks = {key: group.create_task(_ping_one(key, e, timeout)) for key, e in engines.items()}
        replica_tasks = {
            key: [
                group.create_task(_ping_one(key, e, timeout, number))
                for number, e in enumerate(found, 1)
            ]
            for key, found in replicas.items()
        }
    return {
        key: dataclasses.replace(
            task.result(), replicas=tuple(t.result() for t in replica_tasks.get(key, ()))
        )
        for key, task in tasks.items()
    }


async def _ping_one(
    key: BindKey, engine: AsyncEngine, limit: float, replica: int | None = None
) -> BindHealth:
    pool = engine.sync_engine.pool
    busy = _all_checked_out(pool)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            async with engine.connect() as connection:
                await connection.execute(_PING)
    except TimeoutError:
        waited = time.perf_counter() - started
        # Busy before and after, no connection opened for the ping meanwhile: it waited for the
        # pool, not for the server.
        if busy is not None and busy == _all_checked_out(pool):
            error = (
                f"no pooled connection became free within {limit:g} s ({busy} checked out, "
                "none idle, the pool's limit reached): the server was not asked"
            )
        else:
            error = f"no answer within {limit:g} s"
        return BindHealth(key, False, waited, error, replica=replica)
    except Exception as exc:  # every failure is reported, never raised: that is the point
        waited = time.perf_counter() - started
        return BindHealth(key, False, waited, _describe(exc, engine), replica=replica)
    return BindHealth(key, True, time.perf_counter() - started, replica=replica)


def _all_checked_out(pool: sa.Pool) -> int | None:
    """How many connections a queue pool has checked out, if all it has open are (a connection
    being opened counts as checked out) and at least ``pool_size``; None otherwise."""
    if not isinstance(pool, sa.QueuePool) or pool.checkedin() or pool.overflow() < 0:
        return None
    return pool.checkedout()


def _describe(exc: BaseException, engine: AsyncEngine) -> str:
    """``exc`` as one line of text, with the bind's passwords masked wherever they appear."""
    config = bind_config(engine)
    return hide_passwords(first_line(exc), [engine.url], config.passwords if config else ())


def pool_status(
    engines: Mapping[BindKey, AsyncEngine],
    replicas: Mapping[BindKey, Sequence[AsyncEngine]] = EMPTY_DICT,
) -> dict[BindKey, PoolStatus]:
    """Each engine's pool counters, read without I/O; a bind's ``replicas`` in its own.

    Queue pools (the default for servers) report all four counters; pools without them
    (``NullPool``, ``StaticPool``) report None where they have no such number.
    """
    return {
        key: dataclasses.replace(
            _status(key, engine.sync_engine.pool),
            replicas=tuple(
                _status(key, e.sync_engine.pool, number)
                for number, e in enumerate(replicas.get(key, ()), 1)
            ),
        )
        for key, engine in engines.items()
    }


def _status(key: BindKey, pool: sa.Pool, replica: int | None = None) -> PoolStatus:
    def count(name: str) -> int | None:
        method = getattr(pool, name, None)
        return method() if callable(method) else None

    # SQLAlchemy's class, not the subclass asyncbind gives each bind.
    kind = next(c for c in type(pool).__mro__ if c.__module__.startswith("sqlalchemy."))
    return PoolStatus(
        key,
        kind.__name__,
        size=count("size"),
        checked_out=count("checkedout"),
        checked_in=count("checkedin"),
        overflow=count("overflow"),
        replica=replica,
    )
