"""What the soak looks at after its load: the servers' connections and rows, the rows against
the ledger of acknowledged ones, what was logged, and the verdict the run ends with."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from asyncbind import AsyncBind
from asyncbind.exceptions import format_key
from tests.privateservers import PrivateServer

from .servers import DRIVERS, with_driver
from .soakload import GUARD, Key

#: The database the soak makes on each of its servers.
DATABASE = "soak"
#: How SQLAlchemy's pool logs a connection that was never returned and got garbage-collected.
_COLLECTED = "The garbage collector is trying to clean up non-checked-in connection"
#: Characters of a message that the report shows.
WIDTH = 120


async def settle(db: AsyncBind) -> dict[Key, int]:
    """Wait (bounded) for the pools to have nothing checked out; what is still out."""
    loop = asyncio.get_running_loop()
    end = loop.time() + GUARD
    while True:
        pools = {key: engine.sync_engine.pool for key, engine in db.engines.items()}
        out: dict[Key, int] = {key: pool.checkedout() for key, pool in pools.items()}  # type: ignore[attr-defined]
        if not any(out.values()) or loop.time() > end:
            return out
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _connection(server: PrivateServer, database: str | None) -> AsyncIterator[Any]:
    """A connection of its own to ``server``, outside every pool, in autocommit mode."""
    url = with_driver(server.url(database), DRIVERS[server.backend])
    engine = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")
    finally:
        await engine.dispose()


async def admin(server: PrivateServer, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on ``server``'s admin database; its rows, if any."""
    database = "postgres" if server.backend == "postgresql" else None
    async with _connection(server, database) as conn:
        result = await conn.execute(sa.text(sql))
        return [tuple(row) for row in result] if result.returns_rows else []


async def idle_in_transaction(server: PrivateServer) -> int:
    """Connections to the soak's database that sit in a transaction with nothing running."""
    if server.backend == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE datname = '{DATABASE}' AND state LIKE 'idle in transaction%'"
        )
        return int((await admin(server, sql))[0][0])
    sql = (
        "SELECT count(*) FROM information_schema.INNODB_TRX t JOIN "
        "information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
        f"WHERE p.DB = '{DATABASE}' AND p.COMMAND = 'Sleep'"
    )
    # MariaDB fills INNODB_TRX from a cache refreshed at most every 0.1s: a leak is what stays.
    for _ in range(10):
        count = int((await admin(server, sql))[0][0])
        if not count:
            break
        await asyncio.sleep(0.2)
    return count


async def connections(server: PrivateServer) -> int:
    """Connections the server still has open to the soak's database."""
    if server.backend == "postgresql":
        sql = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}'"
    else:
        sql = f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = '{DATABASE}'"
    # A server notices a closed connection a moment later: a leak is what stays.
    for _ in range(50):
        count = int((await admin(server, sql))[0][0])
        if not count:
            break
        await asyncio.sleep(0.2)
    return count


async def rows_in(server: PrivateServer) -> dict[int, str]:
    """Every row of the soak's table on ``server``: id -> the operation that wrote it."""
    async with _connection(server, DATABASE) as conn:
        result = await conn.execute(sa.text("SELECT id, kind FROM soak_rows"))
        return {int(row[0]): str(row[1]) for row in result}


# -- the verdict ----------------------------------------------------------------------------------


@dataclass
class Rows:
    """One bind's rows: those asyncbind acknowledged (id -> how) and those found (id -> kind)."""

    acknowledged: dict[int, str]
    found: dict[int, str]

    def lost(self) -> Counter[str]:
        """Acknowledged rows that are missing, by how they were acknowledged."""
        return Counter(how for i, how in self.acknowledged.items() if i not in self.found)

    def unacknowledged(self) -> Counter[str]:
        """Rows found that were never acknowledged, by the operation that wrote them."""
        return Counter(kind for i, kind in self.found.items() if i not in self.acknowledged)


def verdict(
    rows: dict[Key, Rows], leaks: dict[str, dict[Key, int]], names: dict[Key, str]
) -> tuple[int, str]:
    """The exit status, and the line that ends the run: lost rows first, then what else is
    wrong (rolled-back rows found, connections leaked)."""
    lost = {key: of_bind.lost() for key, of_bind in rows.items()}
    total = sum(sum(counts.values()) for counts in lost.values())
    line = "no acknowledged row lost"
    if total:
        line = f"LOST {_rows(total)}: " + "; ".join(
            f"{format_key(key)} ({names[key]}) {sum(lost[key].values()):,} of "
            f"{len(rows[key].acknowledged):,} ({_kinds(lost[key])})"
            for key in rows
            if lost[key]
        )
    problems = []
    rolled_back = sum(of_bind.unacknowledged()["rollback"] for of_bind in rows.values())
    if rolled_back:
        problems.append(f"{rolled_back:,} rolled-back row(s) found")
    problems += [f"connections {what}: {by_key(n)}" for what, n in leaks.items() if any(n.values())]
    if problems:
        line += "; but " + "; ".join(problems)
    return (1 if total or problems else 0), line


def _rows(n: int) -> str:
    return f"{n:,} acknowledged row" + ("" if n == 1 else "s")


def _kinds(counts: Counter[str]) -> str:
    """``commit 9, both 3``"""
    return ", ".join(f"{kind} {n:,}" for kind, n in counts.most_common())


def counts(counts: Counter[str]) -> str:
    """``12 (commit 9, both 3)``, or ``0``."""
    total = sum(counts.values())
    return f"{total:,} ({_kinds(counts)})" if total else "0"


def by_key(values: dict[Key, int]) -> str:
    return ", ".join(f"{format_key(key)} {value}" for key, value in values.items())


class LogCounter(logging.Handler):
    """Counts warnings and errors logged during the run (SQLAlchemy logs some instead of
    raising, for example a connection that failed to reset on its way back to the pool), and
    Python warnings, which ``logging.captureWarnings`` turns into log records."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.collected: Counter[str] = Counter()
        """Connections never returned to their pool that the garbage collector found, by
        driver (from the pool's log record; the SAWarning that comes with it is not counted)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name != "py.warnings" and message.startswith(_COLLECTED):
            self.collected.update(d for d in DRIVERS.values() if f"<{d}." in message)
        if record.name == "py.warnings":  # "path:line: Category: text": the path says little
            message = message.split(": ", 1)[-1]
        message = re.sub(r" (object )?at 0x[0-9a-f]+", "", message)  # the same error, once
        first_line = message.splitlines()[0][:WIDTH] if message else ""
        self.counts[f"{record.name}: {first_line}"] += 1
