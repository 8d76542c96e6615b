"""Bulk loads and copies cancelled at random points lose no acknowledged row, afterwards either.

With one pooled connection (``pool_size=1, max_overflow=0``), 200 ``load_rows`` and ``db.copy``
calls into PostgreSQL or MariaDB are cancelled at random moments; then 100 session commits and one
more bulk load run normally. Every row whose call returned is in the table, every batch is there
whole or not at all, no server connection is left idle in a transaction, and the server holds
exactly the connections the pools hold.

``ASYNCBIND_STORM_SEED`` sets the random seed (default: a new one, printed on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from serverstate import database_of, open_transactions, server_connections, sqlite_write_locked
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncbind import AsyncBind
from asyncbind.bulk import load_rows

SEED = int(os.environ.get("ASYNCBIND_STORM_SEED", str(random.SystemRandom().randrange(2**32))))
CALLS = 200
COMMITS = 100
GUARD = 240


@dataclass
class Batches:
    """The INSERT batches (executemany) of a copy sent so far, and the copy's task."""

    sent: int = 0
    copying: asyncio.Task[Any] | None = None


@contextlib.contextmanager
def cancelled_in_batch(engine: AsyncEngine, batch: int) -> Iterator[Batches]:
    """Within the block, the copy in ``Batches.copying`` is cancelled as batch number ``batch``
    is sent on ``engine``: the cancellation lands at that executemany's await, in the copy's
    task."""
    batches = Batches()

    def count(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool
    ) -> None:
        if many and statement.startswith("INSERT"):
            batches.sent += 1
            if batches.sent == batch and batches.copying is not None:
                batches.copying.cancel()

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield batches
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)


#: Ids of storm call ``n`` start at ``n * SPAN``; the session commits' at ``COMMIT_BASE``.
SPAN = 1_000
COMMIT_BASE = 10_000_000
FINAL_BASE = 20_000_000
MODES = "SELECT @@SESSION.sql_mode, @@GLOBAL.sql_mode"


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("mysql+asyncmy", marks=pytest.mark.mysql),
    ]
)
def server(request: pytest.FixtureRequest) -> str:
    """A server, with the driver to reach it by when it is not the default one."""
    return str(request.param)


async def database_on(server: str, new_database: NewDatabase) -> str:
    backend, _, driver = server.partition("+")
    url = await new_database(backend)
    if not driver:
        return url
    return sa.make_url(url).set(drivername=server).render_as_string(hide_password=False)


def table(db: AsyncBind, key: str | None) -> sa.Table:
    return db.Table(
        "loaded",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("call", sa.Integer, nullable=False),
        sa.Column("note", sa.String(40)),
        bind_key=key,
    )


async def copy_set_up(db: AsyncBind, rows: int) -> tuple[sa.Table, sa.Table]:
    """Table ``loaded`` on the default bind (the target) and on ``source``, created, the source
    holding ``rows`` rows."""
    target, source = table(db, None), table(db, "source")
    await db.create_all()
    await load_rows(
        db.get_engine("source"),
        source,
        [{"id": i, "call": 0, "note": f"row {i}"} for i in range(1, rows + 1)],
    )
    return target, source


@dataclass
class Call:
    """One storm call: the ids it writes, batch by batch, and how it ended."""

    batches: list[list[int]]
    outcome: str = "running"


@dataclass
class Storm:
    db: AsyncBind
    target: sa.Table
    source: sa.Table
    rng: random.Random
    calls: list[Call] = field(default_factory=list)

    def start(self, n: int) -> tuple[Call, Any]:
        """Call ``n``: a load_rows or a db.copy of a few small batches."""
        rng = self.rng
        count, batch_size = rng.randint(1, 24), rng.choice((3, 5, 8))
        ids = [n * SPAN + j for j in range(1, count + 1)]
        call = Call([ids[i : i + batch_size] for i in range(0, count, batch_size)])
        if rng.random() < 0.5:
            rows = [{"id": i, "call": n, "note": f"load {i}"} for i in ids]
            work = load_rows(self.db.engine, self.target, rows, batch_size=batch_size)
        else:
            query = (
                sa.select(
                    (self.source.c.id + n * SPAN).label("id"),
                    sa.literal(n).label("call"),
                    self.source.c.note,
                )
                .where(self.source.c.id <= count)
                .order_by(self.source.c.id)
            )
            work = self.db.copy(query, self.target, batch_size=batch_size)
        self.calls.append(call)
        return call, work


async def found_ids(url: str, make_db: Callable[..., AsyncBind]) -> set[int]:
    """The ids in the target table, read over a connection of its own."""
    probe = make_db(url, engine_options={"poolclass": sa.NullPool})
    async with probe.engine.connect() as conn:
        return set((await conn.execute(sa.text("SELECT id FROM loaded"))).scalars())


async def settle(db: AsyncBind) -> None:
    """Wait for every other task and for the pools to have every connection back."""
    me = asyncio.current_task()
    while True:
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        busy = [e.sync_engine.pool.checkedout() for e in db.engines.values()]  # type: ignore[attr-defined]
        if not others and not any(busy):
            return
        await asyncio.sleep(0.02)


async def test_cancelled_bulk_calls_lose_no_acknowledged_row(
    server: str,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    context = f"seed {SEED} (rerun with ASYNCBIND_STORM_SEED={SEED})"
    urls = {None: await database_on(server, new_database)}
    urls["source"] = await database_on(server, new_database)
    server = server.partition("+")[0]
    db = make_db(
        urls[None],
        binds={"source": urls["source"]},
        engine_options={"pool_size": 1, "max_overflow": 0, "pool_timeout": GUARD},
    )
    storm = Storm(db, table(db, None), table(db, "source"), random.Random(SEED))
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(GUARD):
        await db.create_all()
        await load_rows(
            db.get_engine("source"),
            storm.source,
            [{"id": i, "call": -1, "note": f"source {i}"} for i in range(1, 25)],
        )

        # Cancellations are spread over the whole of each call: over the time a batch has taken
        # so far (median of the calls that ran to their end), times the call's batches.
        per_batch: list[float] = []
        for n in range(CALLS):
            call, work = storm.start(n)
            task = loop.create_task(work)
            if n >= 5 and storm.rng.random() < 0.8:
                estimate = statistics.median(per_batch) * (len(call.batches) + 1)
                loop.call_later(storm.rng.uniform(0, estimate), task.cancel)
            started = time.perf_counter()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                call.outcome = "cancelled"
            else:
                call.outcome = "returned"
                per_batch.append((time.perf_counter() - started) / len(call.batches))
            if server == "mysql":
                # The load's sql_mode did not stay on the pool's connection.
                await settle(db)
                async with db.engine.connect() as conn:
                    modes = (await conn.execute(sa.text(MODES))).one()
                assert modes[0] == modes[1], (n, call, modes, context)
        await settle(db)

        # Then the pool's one connection serves sessions and one more load as usual.
        for i in range(COMMITS):
            async with db.session() as session:
                await session.execute(storm.target.insert().values(id=COMMIT_BASE + i, call=-2))
                await session.commit()
        final = [{"id": FINAL_BASE + i, "call": -3, "note": None} for i in range(50)]
        assert (await load_rows(db.engine, storm.target, final, batch_size=20)).rows == 50
        copied = sa.select(
            (storm.source.c.id + FINAL_BASE + 100).label("id"),
            storm.source.c.call,
            storm.source.c.note,
        )
        assert (await db.copy(copied, storm.target, batch_size=10)).rows == 24
        await settle(db)

        outcomes = [c.outcome for c in storm.calls]
        assert outcomes.count("cancelled") > CALLS // 3, (outcomes.count("cancelled"), context)
        assert outcomes.count("returned") > CALLS // 10, (outcomes.count("returned"), context)

        found = await found_ids(urls[None], make_db)
        # Every acknowledged row is there: the storm's, the commits' and the last load's.
        acknowledged = {
            i for c in storm.calls if c.outcome == "returned" for b in c.batches for i in b
        }
        acknowledged |= {COMMIT_BASE + i for i in range(COMMITS)}
        acknowledged |= {FINAL_BASE + i for i in range(50)}
        acknowledged |= {FINAL_BASE + 100 + i for i in range(1, 25)}
        missing = acknowledged - found
        assert not missing, (len(missing), sorted(missing)[:10], context)
        assert len(found & acknowledged) == len(acknowledged)
        # A cancelled call landed some whole batches, in order, or none; nothing else landed.
        for n, call in enumerate(storm.calls):
            landed = [b for b in call.batches if set(b) <= found]
            partial = [b for b in call.batches if set(b) & found and not set(b) <= found]
            assert not partial, (n, call, context)
            assert landed == call.batches[: len(landed)], (n, call, context)
        expected_others = {i for c in storm.calls for b in c.batches for i in b} | acknowledged
        assert found <= expected_others, context

        for key, url in urls.items():
            database = database_of(url)
            assert await open_transactions(server, database) == [], (key, context)
            # The server holds exactly the connections the pool holds, once it has ended those
            # the pool discarded.
            pooled = db.engines[key].sync_engine.pool.checkedin()  # type: ignore[attr-defined]
            connections = await server_connections(server, database)
            while connections != pooled:
                await asyncio.sleep(0.1)
                connections = await server_connections(server, database)
            assert pooled == 1, (key, context)
        # Nothing was logged as a problem: no failed reset, no connection left to the collector.
        problems = [
            f"{r.name}: {r.getMessage()}"
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.split(".")[0] in ("sqlalchemy", "asyncbind")
        ]
        assert problems == [], context


@pytest.mark.mysql
async def test_a_load_cancelled_between_batches_gives_the_connection_its_sql_mode_back(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """The load's sql_mode is the load's only: cancelled while it waits for its next rows (no
    statement in flight), the connection goes back to the pool with the mode it had."""
    url = await new_database("mysql")
    db = make_db(url, engine_options={"pool_size": 1, "max_overflow": 0})
    target = table(db, None)
    await db.create_all()
    invalidated: list[object] = []
    sa.event.listen(db.engine.sync_engine, "invalidate", lambda *args: invalidated.append(args))
    waiting = asyncio.Event()

    async def rows() -> Any:
        for i in range(1, 4):
            yield {"id": i, "call": 0, "note": None}
        waiting.set()  # the first batch has been written
        await asyncio.Event().wait()

    async with asyncio.timeout(GUARD):
        task = asyncio.create_task(load_rows(db.engine, target, rows(), batch_size=3))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(db)
        async with db.engine.connect() as conn:
            modes = (await conn.execute(sa.text(MODES))).one()
            landed = (await conn.execute(sa.text("SELECT count(*) FROM loaded"))).scalar()
    assert modes[0] == modes[1]
    assert landed == 3
    assert invalidated == []  # given back as it was, not thrown away


@pytest.mark.parametrize("cancel_at", [0.0, 0.25, 0.5, 0.75], ids=lambda f: f"at-{f:.2f}")
async def test_a_parallel_copy_cancelled_leaves_no_transaction_or_connection_behind(
    server: str,
    cancel_at: float,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A copy in three key ranges at once, cancelled part-way through (a fraction of the time
    the same copy takes uncancelled): every batch landed whole or not at all, no connection is
    left in a transaction, the server holds the connections the pools hold, and the same copy
    then runs to its end over connections that all work."""
    caplog.set_level(logging.WARNING)
    urls = {None: await database_on(server, new_database)}
    urls["source"] = await database_on(server, new_database)
    backend = server.partition("+")[0]
    db = make_db(urls[None], binds={"source": urls["source"]})
    rows = 3_000
    async with asyncio.timeout(GUARD):
        target, source = await copy_set_up(db, rows)
        started = time.perf_counter()
        assert (await db.copy(source, target, batch_size=100, parallel=3)).rows == rows
        took = time.perf_counter() - started
        async with db.engine.begin() as conn:
            await conn.execute(target.delete())

        task = asyncio.create_task(db.copy(source, target, batch_size=100, parallel=3))
        await asyncio.sleep(took * cancel_at)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await settle(db)
        found = await found_ids(urls[None], make_db)
        # The ranges are ids 1-1000, 1001-2000 and 2001-3000; each landed whole batches of 100.
        for start in (1, 1001, 2001):
            assert len({i for i in found if start <= i < start + 1000}) % 100 == 0, found
        for url in urls.values():
            assert await open_transactions(backend, database_of(url)) == []

        # The same copy runs to its end, over connections that work (a reader stopped early
        # was discarded, and its pool opens a new connection in its place).
        async with db.engine.begin() as conn:
            await conn.execute(target.delete())
        assert (await db.copy(source, target, batch_size=100, parallel=3)).rows == rows
        assert len(await found_ids(urls[None], make_db)) == rows
        for key, url in urls.items():
            database = database_of(url)
            assert await open_transactions(backend, database) == [], key
            pooled = db.engines[key].sync_engine.pool.checkedin()  # type: ignore[attr-defined]
            connections = await server_connections(backend, database)
            while connections != pooled:
                await asyncio.sleep(0.1)
                connections = await server_connections(backend, database)
    problems = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.split(".")[0] in ("sqlalchemy", "asyncbind")
    ]
    assert problems == []


@pytest.mark.sqlite
@pytest.mark.parametrize(
    "source_backend",
    [
        pytest.param(name, marks=getattr(pytest.mark, name))
        for name in ("sqlite", "postgresql", "mysql")
    ],
)
async def test_a_copy_into_sqlite_cancelled_mid_batch_leaves_the_file_unlocked(
    source_backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A copy into a SQLite file cancelled while its second batch is being written (the
    ``executemany`` of that batch, which an interrupt rarely stops): the batch is rolled back,
    another connection can write to the file at once, no connection is left checked out, and
    the next copy runs to its end."""
    urls = {None: await new_database("sqlite"), "source": await new_database(source_backend)}
    db = make_db(urls[None], binds={"source": urls["source"]})
    rows = 3_000
    async with asyncio.timeout(GUARD):
        target, source = await copy_set_up(db, rows)
        with cancelled_in_batch(db.engine, 2) as batches:
            batches.copying = asyncio.create_task(db.copy(source, target, batch_size=1_000))
            with pytest.raises(asyncio.CancelledError):
                await batches.copying
        assert batches.sent == 2
        assert not sqlite_write_locked(Path(sa.make_url(urls[None]).database or ""))
        for engine in db.engines.values():
            assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert len(await found_ids(urls[None], make_db)) == 1_000  # the first batch, whole

        async with db.engine.begin() as conn:
            await conn.execute(target.delete())
        assert (await db.copy(source, target, batch_size=1_000)).rows == rows
        assert len(await found_ids(urls[None], make_db)) == rows
