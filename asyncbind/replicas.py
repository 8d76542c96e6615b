"""Read replicas: reads go to a replica of the bind, writes and locks to its primary.

A bind configured with ``"replicas": [url, ...]`` gets one engine per replica
(:func:`make_replica_set`); its own engine stays the primary's. The session's routing
(:class:`~asyncbind.routing.RoutingSession`) finds a statement's bind as usual, then asks
:meth:`ReplicaSet.bind_for` where it goes:

- the primary for whatever writes or locks: a flush, Core INSERT / UPDATE / DELETE, DDL,
  ``text()``, ``SELECT ... FOR UPDATE / FOR SHARE``, a SELECT with an INSERT / UPDATE / DELETE in
  a CTE;
- the primary for every statement on that bind once the session's transaction has written to it
  (or asked for its connection, ``session.connection()``), until that transaction ends (commit,
  rollback or close): read-your-writes;
- the primary for the reads a write makes: the ORM's SELECT of the rows an UPDATE or DELETE with
  ``synchronize_session="fetch"`` is about to change, on a database without RETURNING (MySQL,
  MariaDB's UPDATE), and its check of whether the bind has RETURNING;
- the primary inside ``async with db.primary():`` and for a statement with
  ``.execution_options(use_primary=True)``, or given ``execution_options={"use_primary": True}``
  by the call (``session.execute()``, ``session.get()``...);
- else a replica, the same one for the rest of the transaction: round robin or random over the
  replicas in rotation.

A replica is taken out of rotation when connecting to it fails or times out (its engine pings
pooled connections before handing them out), and when its replay lag, checked when a connection
to it is opened and at most once per ``replica_check_interval``, exceeds ``replica_max_lag``.
It is tried again once ``replica_check_interval`` has passed. The read that found it down goes to
the next replica, or to the primary (``replica_fallback``, on by default), in the same call: the
request does not fail.

The session holds the replica connection of each bind for the transaction (SQLAlchemy begins and
ends the transaction on it) and closes it when the transaction ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import functions, visitors
from sqlalchemy.util import concurrency

from .config import BindConfig, BindKey
from .engines import make_engine
from .exceptions import NoReplicaError, bind_name, first_line
from .registry import bind_config
from .routing import USE_PRIMARY, Router, RoutingSession
from .urls import hide_passwords, render_url

__all__ = [
    "USE_PRIMARY",
    "PrimaryBlock",
    "Replica",
    "ReplicaSet",
    "SessionReplicas",
    "make_replica_set",
]

logger = logging.getLogger("asyncbind")

#: Seconds to wait for a connection to a replica when the bind sets no ``connect_timeout``.
REPLICA_CONNECT_TIMEOUT = 5.0

#: The routers whose sessions use only primaries in the current context (``db.primary()``).
_PRIMARY_ONLY: contextvars.ContextVar[frozenset[Router]] = contextvars.ContextVar(
    "asyncbind_primary_only", default=frozenset()
)

_LAG_SQL = {
    # Nothing received that is not replayed yet: no lag, however old the last replayed commit.
    "postgresql": sa.text(
        "SELECT CASE WHEN NOT pg_is_in_recovery() "
        "OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
        "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
    ),
}


@dataclass(eq=False, slots=True)
class Replica:
    """One replica of a bind and whether it is in rotation."""

    #: Its place among the bind's replicas, from 1 (as messages and health reports name it).
    number: int
    #: Its URL as configured (the engine's may carry asyncbind's read-only settings).
    url: sa.URL
    engine: AsyncEngine
    #: ``time.monotonic()`` before which it is out of rotation (0: in rotation).
    out_until: float = 0.0
    #: Why it is out of rotation, or was last taken out (no password in it).
    reason: str | None = None
    #: When its lag was last measured, and what it was (seconds; None: unknown).
    lag_checked_at: float | None = None
    lag: float | None = None

    def in_rotation(self, now: float) -> bool:
        return self.out_until <= now

    def describe(self, key: BindKey) -> str:
        return f"replica {self.number} ({render_url(self.url)}) of {bind_name(key)}"


class ReplicaSet:
    """The replicas of one bind: which of them a read goes to, and which are in rotation."""

    def __init__(self, config: BindConfig, engines: Sequence[AsyncEngine]) -> None:
        self.key = config.key
        self.replicas = [
            Replica(number, url, engine)
            for number, (url, engine) in enumerate(zip(config.replicas, engines, strict=True), 1)
        ]
        self.fallback = config.replica_fallback
        self.max_lag = config.replica_max_lag
        self.interval = config.replica_check_interval
        self._random = config.replica_choice == "random"
        self._turn = 0

    @property
    def engines(self) -> list[AsyncEngine]:
        return [replica.engine for replica in self.replicas]

    def bind_for(
        self, session: RoutingSession, primary: sa.Engine, mapper: Any, clause: Any
    ) -> sa.Engine | sa.Connection:
        """Where ``session`` sends ``clause`` (None: a flush, or a connection asked for) that
        routing gave to this bind, whose primary is ``primary``."""
        reads = session.replica_reads
        if reads is None:
            reads = session.replica_reads = SessionReplicas()
        if clause is None or not _is_read(clause):
            # A write, a lock, a flush, or session.connection() in a statement (what is sent
            # through it is not seen here); not a get_bind() outside one (to read the dialect).
            if clause is not None or mapper is not None or concurrency.in_greenlet():
                reads.written.add(primary)
            return primary
        if (
            primary in reads.written
            or session.on_primary  # an UPDATE / DELETE's own reads, or use_primary at the call
            or session.twophase  # a standby cannot PREPARE TRANSACTION
            or session.router in _PRIMARY_ONLY.get()
            or clause.get_execution_options().get(USE_PRIMARY)
        ):
            return primary
        held = reads.held.get(primary)
        if held is not None:
            return held
        if not concurrency.in_greenlet():
            # Asked outside a statement (AsyncSession.get_bind() to read the dialect): no I/O.
            # in_greenlet() is SQLAlchemy's own test for "I/O may wait here";
            # test_get_bind_outside_a_statement_does_no_io checks it.
            return primary
        connection = self.connect()
        if connection is None:
            if not self.fallback:
                raise NoReplicaError(self.key, self.reasons())
            reads.held[primary] = primary
            return primary
        reads.held[primary] = connection
        return connection

    def _in_turn(self, now: float) -> Iterator[Replica]:
        usable = [replica for replica in self.replicas if replica.in_rotation(now)]
        if self._random:
            random.shuffle(usable)
            yield from usable
            return
        if usable:
            self._turn += 1
            start = self._turn % len(usable)
            yield from usable[start:]
            yield from usable[:start]

    def connect(self) -> sa.Connection | None:
        """A connection to the next replica in rotation that answers and is within the lag
        bound, or None when there is none. Runs in SQLAlchemy's greenlet (it waits on I/O)."""
        now = time.monotonic()
        for replica in self._in_turn(now):
            try:
                connection = replica.engine.sync_engine.connect()
            except Exception as exc:  # any failure to connect takes it out, and the read goes on
                self._take_out(replica, _say(exc, replica))
                continue
            if self.max_lag is not None and (
                replica.lag_checked_at is None or now - replica.lag_checked_at >= self.interval
            ):
                try:
                    replica.lag = _measure_lag(connection)
                    connection.rollback()
                except Exception as exc:
                    connection.close()
                    self._take_out(replica, f"its lag could not be measured: {_say(exc, replica)}")
                    continue
                except BaseException:  # cancelled: the connection goes back, then the task ends
                    connection.close()
                    raise
                replica.lag_checked_at = now
                if replica.lag is None or replica.lag > self.max_lag:
                    connection.close()
                    lag = "unknown" if replica.lag is None else f"{replica.lag:.1f} s"
                    self._take_out(replica, f"it lags {lag}, more than {self.max_lag:g} s")
                    continue
            if replica.reason is not None:
                logger.info("%s is back in rotation", replica.describe(self.key))
                replica.reason = None
            return connection
        return None

    def _take_out(self, replica: Replica, reason: str) -> None:
        replica.out_until = time.monotonic() + self.interval
        if replica.reason is None:
            logger.warning(
                "%s is out of rotation for %g s: %s",
                replica.describe(self.key),
                self.interval,
                reason,
            )
        replica.reason = reason

    def reasons(self) -> list[str]:
        """Why each replica out of rotation is out, one line each."""
        now = time.monotonic()
        return [
            f"replica {r.number}: {r.reason or 'out of rotation'}"
            for r in self.replicas
            if not r.in_rotation(now)
        ]

    async def dispose(self) -> None:
        for replica in self.replicas:
            await replica.engine.dispose()


class SessionReplicas:
    """What one session's transaction did with replicas: the binds it wrote to, and the
    replica connection (or primary engine, when it fell back) each bind reads from."""

    __slots__ = ("held", "written")

    def __init__(self) -> None:
        self.written: set[sa.Engine] = set()
        self.held: dict[sa.Engine, sa.Engine | sa.Connection] = {}

    def end(self) -> None:
        """The transaction ended: close the replica connections and forget the writes."""
        held = [bind for bind in self.held.values() if isinstance(bind, sa.Connection)]
        self.held.clear()
        self.written.clear()
        with contextlib.ExitStack() as closing:  # each is closed, whatever another raises
            for connection in held:
                closing.callback(connection.close)


def _is_read(clause: Any) -> bool:
    """Whether ``clause`` only reads: a SELECT (or UNION...) that locks no rows, has no
    INSERT / UPDATE / DELETE in a CTE (``select(update(...).returning(...).cte())`` writes) and
    takes no value from a sequence (``select(seq.next_value())`` advances it; a standby refuses).

    ``_for_update_arg`` is where SQLAlchemy keeps ``with_for_update()`` (FOR UPDATE / FOR SHARE,
    ``session.get(..., with_for_update=True)`` included); no public attribute says it.
    ``test_replicas.py`` checks it.
    """
    if isinstance(clause, sa.Select):
        if clause._for_update_arg is not None:
            return False
    elif not isinstance(clause, sa.CompoundSelect):
        return False
    return not any(
        isinstance(element, functions.next_value)
        or (
            isinstance(element, sa.CTE)
            and isinstance(element.element, sa.Insert | sa.Update | sa.Delete)
        )
        for element in visitors.iterate(clause)
    )


def _measure_lag(connection: sa.Connection) -> float | None:
    """The replica's replay lag in seconds: 0 for a server that is not replicating, None when it
    replicates but cannot tell (MariaDB with its SQL thread stopped)."""
    name = connection.dialect.name
    if name in ("mysql", "mariadb"):
        row = connection.exec_driver_sql("SHOW SLAVE STATUS").mappings().first()
        if row is None:
            return 0.0
        behind = row.get("Seconds_Behind_Master")
        return None if behind is None else float(behind)
    sql = _LAG_SQL.get(name)
    if sql is None:
        return 0.0
    value = connection.execute(sql).scalar()
    return 0.0 if value is None else float(value)


def _say(exc: BaseException, replica: Replica) -> str:
    config = bind_config(replica.engine)
    passwords = config.passwords if config else ()
    return hide_passwords(first_line(exc), [replica.url, replica.engine.url], passwords)


def end_transaction(session: Any, transaction: Any) -> None:
    """``after_transaction_end``: when a session's outermost transaction ends, its replica
    connections are closed and reads may go to replicas again."""
    reads = getattr(session, "replica_reads", None)
    if reads is not None and transaction.parent is None:
        reads.end()


def make_replica_set(config: BindConfig) -> ReplicaSet | None:
    """The replicas of ``config``'s bind, an engine each (no connection yet); None without any.

    A replica's engine is made like the primary's, with its options, and is read-only (writes
    are refused before they are sent), pings pooled connections before handing them out, and
    waits ``connect_timeout`` (5 s when the bind sets none) for a new connection.
    """
    if not config.replicas:
        return None
    if not sa.event.contains(RoutingSession, "after_transaction_end", end_transaction):
        # Only once a bind has replicas: sessions of the others pay nothing for them.
        sa.event.listen(RoutingSession, "after_transaction_end", end_transaction)
    options = dict(config.engine_options)
    options.setdefault("pool_pre_ping", True)
    engines = []
    for number, url in enumerate(config.replicas, start=1):
        replica = dataclasses.replace(
            config,
            url=url,
            engine_options=options,
            replicas=(),
            read_only=True,
            connect_timeout=config.connect_timeout or REPLICA_CONNECT_TIMEOUT,
            replica=number,
        )
        engines.append(make_engine(replica))
    return ReplicaSet(config, engines)


class PrimaryBlock(AbstractAsyncContextManager[None], AbstractContextManager[None]):
    """``async with db.primary():`` (or ``with``): every statement of ``db``'s sessions in this
    task, and in the tasks it starts, goes to the primaries."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._tokens: list[contextvars.Token[frozenset[Router]]] = []

    def __enter__(self) -> None:
        self._tokens.append(_PRIMARY_ONLY.set(_PRIMARY_ONLY.get() | {self._router}))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _PRIMARY_ONLY.reset(self._tokens.pop())

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
