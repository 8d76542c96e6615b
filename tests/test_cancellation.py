"""Cancellations: tasks cancelled at any point of their work leak nothing and report nothing.

Where a task is cancelled is chosen by counts, never by the clock, so that a loaded machine
cancels at the same points as an idle one: just after the task's Nth SQLAlchemy event (a
statement, a commit or rollback, a pool checkout, reset or checkin, a new connection), so at the
await that follows it; or after N turns of the event loop, which also lands in the middle of
connection handshakes.

- A storm of thousands of tasks over two binds (PostgreSQL and MariaDB) execute, stream, flush,
  commit, roll back and close sessions, most of them cancelled. Afterwards no pool has a
  connection checked out, neither server has a transaction open for the test's database, every
  row whose commit returned is in its database, and nothing was reported: no log record at
  WARNING or above, nothing from asyncio's loop exception handler, no ResourceWarning.
- A storm of 300 operations (connect, execute, commit, session close) on each server reports
  nothing either, and leaves the server with exactly the connections its pool holds.
- A task cancelled while waiting for a connection, a cleanup cancelled halfway, a pool's reset
  cut short: each is checked on its own.

``ASYNCBIND_STORM_TASKS`` sets the number of tasks of the first storm (default 2000) and
``ASYNCBIND_STORM_SEED`` the random seed (default: a new one, printed in the failure message).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from quiet import Reports
from serverstate import (
    database_of,
    open_transactions,
    server_connections,
    settled_connections,
)
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncSession

from asyncbind import AsyncBind, RoutingSession, stopping
from asyncbind.cancellation import run_to_completion
from asyncbind.testing import rolled_back

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]

TASKS = int(os.environ.get("ASYNCBIND_STORM_TASKS", "2000"))
SEED = int(os.environ.get("ASYNCBIND_STORM_SEED", str(random.SystemRandom().randrange(2**32))))
#: Tasks running at once: more than the pools hold, so that some wait for a connection.
CONCURRENCY = 48
#: A generous bound for things that must finish, so a hang fails instead of blocking the suite.
GUARD = 120
KEYS: tuple[str | None, ...] = (None, "maria")
BACKEND_OF = {None: "postgresql", "maria": "mysql"}
CONTEXT = f"seed {SEED} (rerun with ASYNCBIND_STORM_SEED={SEED})"


# -- where tasks are cancelled ----------------------------------------------------------------

#: The events after which a task can be cancelled: the cancellation lands at the await that
#: follows (the statement, the commit, the rollback of the pool's reset, the close of an
#: overflow connection...).
ENGINE_EVENTS = ("before_cursor_execute", "commit", "rollback")
POOL_EVENTS = ("connect", "checkout", "reset", "checkin")


@dataclass
class Plans:
    """Which task is to be cancelled at which of its events, and what became of each task; how
    many connections the pools hold open (made, less closed)."""

    at_event: dict[asyncio.Task[Any], list[int]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    open_connections: int = 0

    def listen(self, engine: sa.Engine) -> None:
        for name in (*ENGINE_EVENTS, *POOL_EVENTS):
            sa.event.listen(engine, name, self._seen)
        sa.event.listen(engine, "connect", lambda *_: self._count(1))
        sa.event.listen(engine, "close", lambda *_: self._count(-1))
        sa.event.listen(engine, "close_detached", lambda *_: self._count(-1))

    def _count(self, change: int) -> None:
        self.open_connections += change

    def _seen(self, *_args: Any) -> None:
        task = asyncio.current_task()
        countdown = self.at_event.get(task)  # type: ignore[arg-type]
        if countdown is not None and task is not None:
            countdown[0] -= 1
            if countdown[0] == 0:
                task.cancel()

    async def run(self, work: asyncio.Task[str], rng: random.Random, turns: int = 40) -> None:
        """Await ``work``, cancelled (or not) as ``rng`` plans it; count how it ended."""
        plan = rng.choices(("none", "events", "loop-turns"), weights=(2, 4, 4))[0]
        canceller = None
        if plan == "events":
            self.at_event[work] = [rng.randint(1, 6)]
        elif plan == "loop-turns":
            canceller = asyncio.create_task(cancel_after_turns(work, rng.randint(0, turns)))
        try:
            self.outcomes[f"{plan}: {await work}"] += 1
        except asyncio.CancelledError:
            if not work.cancelled():
                raise
            self.outcomes[f"{plan}: cancelled"] += 1
        finally:
            self.at_event.pop(work, None)
            if canceller is not None:
                canceller.cancel()

    def cancelled(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome.endswith(": cancelled"))

    def finished(self) -> int:
        return sum(self.outcomes.values()) - self.cancelled()


async def cancel_after_turns(task: asyncio.Task[Any], turns: int) -> None:
    """Cancel ``task`` after ``turns`` turns of the event loop."""
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()


def nothing_reported(reports: Reports) -> dict[str, list[str]]:
    return {kind: [] for kind in reports.all()}


def checked_out(db: AsyncBind) -> dict[str | None, int]:
    return {key: engine.pool.checkedout() for key, engine in db.engines.items()}  # type: ignore[attr-defined]


async def settle(db: AsyncBind) -> None:
    """Wait for every other task (shielded cleanups included) and for the pools to be idle."""
    me = asyncio.current_task()
    async with asyncio.timeout(GUARD):
        while True:
            others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not others and not any(checked_out(db).values()):
                return
            await asyncio.sleep(0.05)


@dataclass
class Storm:
    db: AsyncBind
    rows: dict[str | None, type[Any]]
    databases: dict[str | None, str]
    committed: dict[str | None, set[str]] = field(default_factory=lambda: {k: set() for k in KEYS})
    plans: Plans = field(default_factory=Plans)


@pytest.fixture
async def storm(new_database: NewDatabase, make_db: Callable[..., AsyncBind]) -> Storm:
    urls = {key: await new_database(BACKEND_OF[key]) for key in KEYS}
    db = make_db(
        urls[None],
        binds={"maria": urls["maria"]},
        # Smaller pools than CONCURRENCY: tasks also get cancelled while waiting for a connection.
        engine_options={"pool_size": 6, "max_overflow": 6, "pool_timeout": GUARD},
    )

    class PgRow(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "storm_rows"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        token: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(40), unique=True)
        task: sa_orm.Mapped[int]

    class MariaRow(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "maria"
        __tablename__ = "storm_rows"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        token: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(40), unique=True)
        task: sa_orm.Mapped[int]

    await db.create_all()
    async with db.session() as session:
        # Something to read and stream from the start.
        for model in (PgRow, MariaRow):
            session.add_all(model(token=f"seed-{i}", task=-1) for i in range(50))
        await session.commit()
    databases = {key: sa.make_url(urls[key]).database or "" for key in KEYS}
    return Storm(db, {None: PgRow, "maria": MariaRow}, databases)


def _sleep_sql(key: str | None, seconds: float) -> sa.TextClause:
    if BACKEND_OF[key] == "postgresql":
        return sa.text(f"SELECT pg_sleep({seconds})")
    return sa.text(f"SELECT SLEEP({seconds})")


async def session_work(storm: Storm, n: int, rng: random.Random) -> str:
    """One task's session work: a random script over one or both binds."""
    key = rng.choice(KEYS)
    row = storm.rows[key]
    script = rng.choice(
        ("execute", "stream", "commit", "commit_both", "core_commit", "rollback", "close", "sleep")
    )
    async with storm.db.session() as session:
        if script == "execute":
            result = await session.execute(sa.select(row).limit(5))
            result.scalars().all()
        elif script == "stream":
            result = await session.stream(sa.select(row.id).order_by(row.id))
            async for i, _ in aenumerate(result):
                if i >= rng.randrange(1, 60):
                    break
        elif script in ("commit", "commit_both"):
            keys = KEYS if script == "commit_both" else (key,)
            tokens = {k: [f"t{n}-{k}-{j}" for j in range(rng.randrange(1, 4))] for k in keys}
            for k in keys:
                session.add_all(storm.rows[k](token=t, task=n) for t in tokens[k])
            await session.flush()
            await session.execute(sa.select(sa.func.count()).select_from(row))
            await session.commit()
            for k in keys:
                storm.committed[k].update(tokens[k])
        elif script == "core_commit":
            tokens = [f"c{n}-{key}-{j}" for j in range(rng.randrange(1, 4))]
            await session.execute(sa.insert(row), [{"token": t, "task": n} for t in tokens])
            await session.commit()
            storm.committed[key].update(tokens)
        elif script == "rollback":
            session.add(row(token=f"r{n}-{key}", task=n))
            await session.flush()
            await session.rollback()
            await session.execute(sa.select(row.id).limit(1))
        elif script == "close":
            await session.execute(sa.select(row.id).limit(1))
            session.add(row(token=f"x{n}-{key}", task=n))
            await session.flush()
            await session.close()
        else:
            await session.execute(_sleep_sql(key, 0.01), bind_arguments={"bind_key": key})
            session.add(row(token=f"s{n}-{key}", task=n))
            await session.flush()
            await session.execute(_sleep_sql(key, 0.01), bind_arguments={"bind_key": key})
    return script


async def aenumerate(result: Any) -> Any:
    i = 0
    async for item in result:
        yield i, item
        i += 1


async def run_storm(storm: Storm, tasks: int, rng: random.Random) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)
    await storm.db.dispose()  # the pools count their connections from here on
    for engine in storm.db.engines.values():
        storm.plans.listen(engine.sync_engine)

    async def one(n: int) -> None:
        async with slots:
            work = asyncio.create_task(session_work(storm, n, random.Random(rng.random())))
            await storm.plans.run(work, rng)

    async with asyncio.timeout(GUARD * 4):
        async with asyncio.TaskGroup() as group:
            for n in range(tasks):
                group.create_task(one(n))


async def test_cancellation_storm_leaks_nothing_and_reports_nothing(storm: Storm) -> None:
    rng = random.Random(SEED)
    reports = Reports().start()
    try:
        reports.watch(asyncio.get_running_loop())
        await run_storm(storm, TASKS, rng)
        await settle(storm.db)

        # Many tasks were cancelled and every task nobody cancelled finished, or the storm
        # proved nothing.
        outcomes = storm.plans.outcomes
        assert storm.plans.cancelled() >= TASKS // 4, (outcomes, CONTEXT)
        assert not outcomes["none: cancelled"], (outcomes, CONTEXT)
        assert storm.plans.finished() >= TASKS // 10, (outcomes, CONTEXT)
        assert checked_out(storm.db) == {None: 0, "maria": 0}, CONTEXT
        for key in KEYS:
            backend, database = BACKEND_OF[key], storm.databases[key]
            assert await open_transactions(backend, database) == [], (key, CONTEXT)

        # Every row whose commit returned is there.
        async with storm.db.session() as session:
            for key in KEYS:
                row = storm.rows[key]
                present = set((await session.scalars(sa.select(row.token))).all())
                missing = storm.committed[key] - present
                assert not missing, (key, sorted(missing)[:10], len(missing), CONTEXT)
                assert storm.committed[key], (key, "no commit completed", CONTEXT)

        # The pools still work.
        async with storm.db.session() as session:
            for key in KEYS:
                one = sa.select(sa.literal(1))
                assert (await session.execute(one, bind_arguments={"bind_key": key})).scalar() == 1
        await settle(storm.db)

        # The servers hold exactly the connections the pools have open, and none of the test's
        # after dispose().
        total = sum([await server_connections(BACKEND_OF[k], storm.databases[k]) for k in KEYS])
        assert total == storm.plans.open_connections, CONTEXT
        await storm.db.dispose()
        for key in KEYS:
            backend, database = BACKEND_OF[key], storm.databases[key]
            assert await settled_connections(backend, database, 0) == 0, (key, CONTEXT)
        gc.collect()  # a connection left to the garbage collector would be reported now
    finally:
        reports.stop()
    assert reports.all() == nothing_reported(reports), CONTEXT


async def test_cancelled_while_waiting_for_a_connection(
    storm: Storm,
) -> None:
    """A task cancelled while the pool is exhausted gives up its place and leaks nothing."""
    db = storm.db
    holders: list[AsyncSession] = []
    asking = asyncio.Event()
    ask = lambda _: asking.set()  # noqa: E731
    try:
        for _ in range(12):  # pool_size + max_overflow: the pool is now empty
            session = db.session()
            await session.execute(sa.select(storm.rows[None].id).limit(1))
            holders.append(session)
        assert checked_out(db)[None] == 12
        sa.event.listen(RoutingSession, "do_orm_execute", ask)
        waiter = asyncio.create_task(_one_query(db, storm.rows[None]))
        async with asyncio.timeout(GUARD):
            await asking.wait()
        # The statement is under way, and the pool has nothing to give it: its only await from
        # here is the wait for a connection.
        assert not waiter.done() and checked_out(db)[None] == 12
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    finally:
        if sa.event.contains(RoutingSession, "do_orm_execute", ask):
            sa.event.remove(RoutingSession, "do_orm_execute", ask)
        for session in holders:
            await session.close()
    await settle(db)
    assert checked_out(db) == {None: 0, "maria": 0}
    assert await _one_query(db, storm.rows[None]) is not None


async def _one_query(db: AsyncBind, row: type[Any]) -> Any:
    async with db.session() as session:
        return (await session.execute(sa.select(row.id).limit(1))).scalar()


# -- a cleanup cut short ----------------------------------------------------------------------

ALL_BACKENDS = [
    pytest.param(name, marks=getattr(pytest.mark, name))
    for name in ("sqlite", "postgresql", "mysql")
]


def cancel_at_first_rollback(engines: list[sa.Engine], caller: list[asyncio.Task[Any]]) -> None:
    """Cancel the task put in ``caller`` when a rollback (or a rollback to a savepoint) of a
    connection of ``engines`` next starts, once: the cancellation lands at the rollback's await
    (the caller's own when its close runs in place; otherwise the caller is waiting for the
    close's task)."""

    def rolling_back(_conn: Any, *_savepoint: Any) -> None:
        if caller:
            caller.pop().cancel()

    for engine in engines:
        sa.event.listen(engine, "rollback", rolling_back)
        sa.event.listen(engine, "rollback_savepoint", rolling_back)


def invalidations(engines: list[sa.Engine]) -> list[object]:
    """The connections of ``engines`` invalidated from now on (dropped, never reused)."""
    seen: list[object] = []
    for engine in engines:
        sa.event.listen(
            engine, "invalidate", lambda dbapi_connection, *_: seen.append(dbapi_connection)
        )
    return seen


async def ids_in(db: AsyncBind, key: str | None = None) -> list[int]:
    async with db.engines[key].connect() as conn:
        return list((await conn.execute(sa.text("SELECT id FROM t ORDER BY id"))).scalars())


async def make_table(db: AsyncBind, key: str | None = None) -> None:
    async with db.engines[key].begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO t (id) VALUES (1)"))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("cleanup", ["close", "reset", "async with"])
async def test_a_close_cut_short_during_its_rollback_drops_its_one_connection(
    backend: str, cleanup: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A session on one connection closes in place, as SQLAlchemy's does: no task of its own. A
    cancellation landing during its rollback drops the connection (never back in the pool half
    rolled back); the server rolls the transaction back as the connection ends, nothing is
    reported, and the session and the bind go on."""
    url = await new_database(backend)
    db = make_db(url)
    await make_table(db)
    engine = db.engines[None].sync_engine
    dropped = invalidations([engine])
    caller: list[asyncio.Task[Any]] = []
    cancel_at_first_rollback([engine], caller)
    session = db.session()
    ended: list[Any] = []
    sa.event.listen(session.sync_session, "after_transaction_end", lambda *args: ended.append(args))
    reports = Reports().start()
    try:
        reports.watch(asyncio.get_running_loop())

        async def request() -> None:
            if cleanup == "async with":
                async with session:
                    await session.execute(sa.text("INSERT INTO t (id) VALUES (2)"))
            else:
                await session.execute(sa.text("INSERT INTO t (id) VALUES (2)"))
                await getattr(session, cleanup)()

        task = asyncio.create_task(request())
        caller.append(task)
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(GUARD):
                await task
        assert not caller  # cancelled during the rollback
        assert len(dropped) == 1
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert not session.in_transaction() and not session.identity_map
        assert len(ended) == 1  # the transaction ended, as the events of a close say
        await stopping.settle(db.engines.values())
        assert engine not in stopping._STOPPERS  # a ROLLBACK is not stopped from outside
        assert await ids_in(db) == [1]
        if backend != "sqlite":
            assert await open_transactions(backend, database_of(url)) == []
        async with session:  # the session goes on, on a new connection
            assert list((await session.execute(sa.text("SELECT id FROM t"))).scalars()) == [1]
    finally:
        reports.stop()
    assert reports.all() == nothing_reported(reports)


@pytest.mark.sqlite
async def test_a_cancelled_statement_keeps_an_in_memory_database(
    make_db: Callable[..., AsyncBind],
) -> None:
    """An in-memory database's one connection is the database: a session cancelled at any point
    of its statements or its commit leaves it in place (SQLAlchemy counts a cancellation as a
    disconnect, and closing that connection would lose every table and row)."""
    db = make_db("sqlite://")
    await make_table(db)
    dropped = invalidations([db.engine.sync_engine])
    reports = Reports().start()
    try:
        reports.watch(asyncio.get_running_loop())
        for turns in range(12):  # loop turns before the cancellation: lands at each await

            async def request(row: int) -> None:
                async with db.session() as session:
                    await session.execute(sa.text("INSERT INTO t (id) VALUES (:id)"), {"id": row})
                    await session.execute(sa.text("SELECT count(*) FROM t"))
                    await session.commit()

            task = asyncio.create_task(request(100 + turns))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            async with asyncio.timeout(GUARD):
                await asyncio.gather(task, return_exceptions=True)
            assert 1 in await ids_in(db), turns  # the table and its committed row are there
    finally:
        reports.stop()
    assert dropped == []
    assert reports.all() == nothing_reported(reports)
    async with db.session() as session:  # sessions work on
        await session.execute(sa.text("INSERT INTO t (id) VALUES (2)"))
        await session.commit()
    assert {1, 2} <= set(await ids_in(db))


def _intact_cases() -> list[Any]:
    cases = [
        pytest.param(backend, way, marks=getattr(pytest.mark, backend), id=f"{way}-{backend}")
        for way in ("two binds", "cancelled already", "given a connection")
        for backend in ("sqlite", "postgresql", "mysql")
    ]
    return [*cases, pytest.param("sqlite", "in memory", marks=pytest.mark.sqlite, id="in memory")]


@pytest.mark.parametrize(("backend", "way"), _intact_cases())
async def test_a_cleanup_cancelled_halfway_returns_its_connections_intact(
    backend: str, way: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A close that a cancellation must not cut short runs in a task of its own and finishes
    first; the connections go back to the pool rolled back, not away. So it is for a session on
    two binds, for a close made by a task being cancelled already (``finally:`` after a
    cancellation, the end of ``async with`` in a cancelled task, anyio's cancel scopes that cancel
    every await), for a session given its connection (``rolled_back()``'s, which other sessions
    share), and for an in-memory SQLite database, whose one connection is the database."""
    keys: list[str | None] = [None, "other"] if way == "two binds" else [None]
    if way == "in memory":
        db = make_db("sqlite:///:memory:")
    elif way == "two binds":
        db = make_db(await new_database(backend), binds={"other": await new_database(backend)})
    else:
        db = make_db(await new_database(backend))
    for key in keys:
        await make_table(db, key)
    engines = [db.engines[key].sync_engine for key in keys]
    dropped = invalidations(engines)
    caller: list[asyncio.Task[Any]] = []
    stack = contextlib.AsyncExitStack()
    if way == "given a connection":
        await stack.enter_async_context(rolled_back(db))
    session = db.session()
    inserted = asyncio.Event()

    async def request() -> None:
        try:
            for key in keys:
                await session.execute(
                    sa.text("INSERT INTO t (id) VALUES (2)"), bind_arguments={"bind_key": key}
                )
            inserted.set()
            if way == "cancelled already":
                await asyncio.Event().wait()  # cancelled here, once
        finally:
            if way == "cancelled already":
                caller.append(task)  # and once more during the rollback
            await session.close()

    cancel_at_first_rollback(engines, caller)
    async with stack:
        task = asyncio.create_task(request())
        if way == "cancelled already":
            async with asyncio.timeout(GUARD):
                await inserted.wait()
            task.cancel()
        else:
            caller.append(task)
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(GUARD):
                await task
        assert not caller  # cancelled during the rollback
        assert dropped == []
    if way != "in memory":  # a static pool counts nothing
        assert set(checked_out(db).values()) == {0}
    assert not session.in_transaction() and not session.identity_map
    for key in keys:
        assert await ids_in(db, key) == [1]


# -- a storm that must report nothing ---------------------------------------------------------

QUIET_OPERATIONS = 300
#: Operations at once: more than the pool holds, so that some wait for a connection and most
#: connections are overflow ones, made for the operation and closed on its return.
QUIET_CONCURRENCY = 12


async def quiet_operation(db: AsyncBind, table: sa.Table, kind: str, n: int) -> str:
    if kind == "connect":
        async with db.engine.connect() as conn:
            await conn.execute(sa.select(sa.literal(n)))
    elif kind == "execute":
        async with db.session() as session:
            (await session.execute(sa.select(table).limit(3))).all()
    elif kind == "commit":
        async with db.session() as session:
            await session.execute(sa.insert(table).values(n=n))
            await session.commit()
    else:
        session = db.session()
        try:
            await session.execute(sa.insert(table).values(n=n))
        finally:
            await session.close()
    return kind


async def run_quiet_storm(db: AsyncBind, table: sa.Table, plans: Plans, rng: random.Random) -> None:
    slots = asyncio.Semaphore(QUIET_CONCURRENCY)

    async def one(n: int) -> None:
        kind = rng.choice(("connect", "execute", "commit", "close"))
        async with slots:
            work = asyncio.create_task(quiet_operation(db, table, kind, n))
            await plans.run(work, rng, turns=30)

    async with asyncio.timeout(GUARD):
        for start in range(0, QUIET_OPERATIONS, 50):
            if start:
                await db.dispose()  # so that the next operations connect anew
            async with asyncio.TaskGroup() as group:
                for n in range(start, start + 50):
                    group.create_task(one(n))


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_cancellation_storm_reports_nothing_and_leaves_the_pool_clean(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    url = await new_database(server)
    db = make_db(url, engine_options={"pool_size": 2, "max_overflow": 8, "pool_timeout": GUARD})
    table = db.Table(
        "storm", sa.Column("id", sa.Integer, primary_key=True), sa.Column("n", sa.Integer)
    )
    await db.create_all()
    await db.dispose()  # the pool counts its connections from here on
    plans = Plans()
    plans.listen(db.engine.sync_engine)
    rng = random.Random(SEED)
    reports = Reports().start()
    try:
        reports.watch(asyncio.get_running_loop())
        await run_quiet_storm(db, table, plans, rng)
        await settle(db)
        # Every operation that nobody cancelled finished; many were cancelled.
        assert not plans.outcomes["none: cancelled"], (plans.outcomes, CONTEXT)
        assert plans.cancelled() >= QUIET_OPERATIONS // 5, (plans.outcomes, CONTEXT)
        # The pool is clean: nothing checked out, and the server holds exactly the connections
        # the pool has open (a connection attempt cut short finishes by itself and is closed).
        assert db.engine.sync_engine.pool.checkedout() == 0, CONTEXT  # type: ignore[attr-defined]
        database = sa.make_url(url).database or ""
        pooled = plans.open_connections
        assert 0 <= pooled <= 10, (pooled, CONTEXT)
        assert await settled_connections(server, database, pooled) == pooled, CONTEXT
        await db.dispose()
        assert await settled_connections(server, database, 0) == 0, CONTEXT
        gc.collect()
    finally:
        reports.stop()
    assert reports.all() == nothing_reported(reports), CONTEXT


@pytest.mark.mysql
async def test_a_reset_cut_short_drops_its_connection_quietly_and_the_timeout_still_fires(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A pool rolls each returned connection back (MariaDB's rollback is a round trip even after
    a commit). A timeout that fires during that rollback drops the connection, is reported as
    the TimeoutError it is, and nothing is logged."""
    url = await new_database("mysql")
    db = make_db(url)
    table = db.Table("items", sa.Column("id", sa.Integer, primary_key=True))
    await db.create_all()
    engine = db.engine.sync_engine
    invalidated: list[object] = []
    sa.event.listen(engine, "invalidate", lambda *args: invalidated.append(args))
    loop = asyncio.get_running_loop()
    reports = Reports().start()
    try:
        reports.watch(loop)
        async with asyncio.timeout(GUARD):  # a hang fails, as this other timeout
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as deadline:

                    def expire_now(*_args: Any) -> None:
                        deadline.reschedule(loop.time())  # fires at the rollback's first await

                    sa.event.listen(engine, "reset", expire_now, insert=True)
                    try:
                        async with db.session() as session:
                            sql = sa.text("SELECT CONNECTION_ID()")
                            old = (await session.execute(sql)).scalar()
                            await session.execute(sa.insert(table).values(id=1))
                            await session.commit()  # the handed-back cancellation is raised
                            await asyncio.sleep(GUARD)  # never reached
                    finally:
                        sa.event.remove(engine, "reset", expire_now)
            assert deadline.expired()
    finally:
        reports.stop()
    assert reports.all() == nothing_reported(reports)
    assert len(invalidated) == 1  # dropped, never reused
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with db.session() as session:
        assert (await session.execute(sa.text("SELECT CONNECTION_ID()"))).scalar() != old
        assert (await session.execute(sa.select(table.c.id))).scalars().all() == [1]  # committed
    database = sa.make_url(url).database or ""
    assert await settled_connections("mysql", database, 1) == 1  # the new one only


@pytest.mark.parametrize("ending", ["close", "commit", "rollback", "transaction's commit"])
async def test_a_cancellation_handed_back_by_the_pool_is_raised_inside_the_block(
    backend: str, url: str, make_db: Callable[..., AsyncBind], ending: str
) -> None:
    """A timeout that fires while the pool rolls back a connection a session's close returns,
    or closes an overflow connection a commit or rollback returns to a full pool, is raised by
    that operation, inside the timeout's block, as its TimeoutError. Left pending instead
    (asyncio raises a cancellation of a running task at its next suspension), it would let the
    block end as if nothing happened and cancel the task's first await after it, which nobody
    cancelled."""
    db = make_db(url, engine_options={"pool_size": 1, "max_overflow": 1})
    engine = db.engine.sync_engine
    # The pool's rollback of a connection in a transaction, or its close of one it has no room
    # for: the await that the timeout's cancellation lands on.
    event = "reset" if ending == "close" else "checkin"
    # aiomysql closes a connection without a suspension: nothing can land in it.
    lands = ending == "close" or backend != "mysql"
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    reports = Reports().start()
    try:
        reports.watch(loop)
        async with asyncio.timeout(GUARD):  # a hang fails, as this other timeout
            held = await db.engine.connect()  # the pool's one connection
            session = db.session()
            transaction = await session.begin()
            await session.execute(sa.select(1))  # on the overflow connection
            await held.close()  # back in the pool, which is full now
            with pytest.raises(TimeoutError) if lands else contextlib.nullcontext():
                async with asyncio.timeout(None) as deadline:

                    def expire_now(*_args: Any) -> None:
                        deadline.reschedule(loop.time())  # fires at the pool's next await

                    sa.event.listen(engine, event, expire_now, insert=True)
                    try:
                        if ending == "transaction's commit":
                            await transaction.commit()
                        elif ending == "commit":
                            await session.commit()
                        elif ending == "rollback":
                            await session.rollback()
                        else:
                            await session.close()
                    finally:
                        sa.event.remove(engine, event, expire_now)
                    # No await from here to the end of the block: the operation raised already.
            assert deadline.expired() is lands
            await asyncio.sleep(0)  # not cancelled: nothing is left pending
            assert task.cancelling() == 0
            await session.close()
    finally:
        reports.stop()
    assert reports.all() == nothing_reported(reports)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with db.session() as session:
        assert (await session.execute(sa.select(1))).scalar() == 1


async def test_cleanup_runs_to_its_end_and_the_caller_is_cancelled_after() -> None:
    # What run_to_completion() promises each close and dispose, on its own: a caller cancelled
    # meanwhile (here by asyncio.timeout) resumes only once the cleanup has finished, and then
    # gets its cancellation, which the timeout recognises as its own.
    started, release = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def cleanup() -> str:
        steps.append("started")
        started.set()
        await release.wait()
        steps.append("finished")
        return "done"

    async def caller() -> None:
        async with asyncio.timeout(0):  # due at once: it fires while the cleanup runs
            await run_to_completion(cleanup(), name="the caller")
            steps.append("caller went on")  # never: the timeout is raised here

    async def release_later() -> None:
        await started.wait()
        for _ in range(5):  # turns of the loop in which the timeout has fired, and been held
            await asyncio.sleep(0)
        assert steps == ["started"]
        assert [t.get_name() for t in asyncio.all_tasks()].count("the caller") == 1
        release.set()

    with pytest.raises(TimeoutError):
        await asyncio.gather(caller(), release_later())
    assert steps == ["started", "finished"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    # Not cancelled, the caller gets the cleanup's result, or its error.
    release.set()
    assert await run_to_completion(cleanup()) == "done"

    async def failing() -> None:
        raise ValueError("the cleanup's own error")

    with pytest.raises(ValueError, match="the cleanup's own error"):
        await run_to_completion(failing())


async def test_a_cleanup_failing_as_its_caller_is_cancelled_reports_nothing() -> None:
    # The cleanup fails and its caller is cancelled in the same turn of the loop, before the
    # caller resumes: the caller gets its cancellation, and the cleanup's error is retrieved
    # (asyncio reports a future's error nobody retrieved when the future is collected).
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["message"]))
    caller: asyncio.Task[Any] | None = None

    async def failing() -> None:
        assert caller is not None
        loop.call_soon(caller.cancel)  # runs before the caller resumes
        raise ValueError("the cleanup's own error")

    try:
        caller = asyncio.create_task(run_to_completion(failing()))
        with pytest.raises(asyncio.CancelledError):
            await caller
        caller = None
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert errors == []

    # Cancelled before it has failed, the caller waits for it and gets the cleanup's error.
    started = asyncio.Event()

    async def failing_later() -> None:
        started.set()
        await asyncio.sleep(0)
        raise ValueError("failed after the caller was cancelled")

    waiting = asyncio.create_task(run_to_completion(failing_later()))
    await started.wait()
    waiting.cancel()
    with pytest.raises(ValueError, match="failed after the caller was cancelled"):
        await waiting


async def test_a_cleanup_cancelled_before_it_starts_does_not_leave_its_caller_waiting() -> None:
    # Cancelled before its first step, the cleanup's coroutine never runs: the caller gets the
    # cancellation instead of waiting for an outcome nobody will give.
    ran: list[str] = []

    async def cleanup() -> None:
        ran.append("cleanup")

    def cancel_the_cleanup() -> None:
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "the cleanup"]
        task.cancel()

    async def caller() -> None:
        asyncio.get_running_loop().call_soon(cancel_the_cleanup)  # before the cleanup's 1st step
        await run_to_completion(cleanup(), name="the cleanup")

    waiting = asyncio.create_task(caller())
    done, _ = await asyncio.wait({waiting}, timeout=GUARD)
    assert waiting in done, "the caller of a cleanup cancelled before it started still waits"
    assert waiting.cancelled()
    assert ran == []


async def test_a_cleanups_own_timeouts_still_cut_it_short() -> None:
    """The cleanup's task stays cancellable from within: a timeout on its own I/O (a rollback
    bounded by ``statement_timeout`` against a server that stopped answering, say) ends it,
    whether or not its caller was cancelled meanwhile."""

    async def hanging_io() -> str:
        try:
            async with asyncio.timeout(0.05):  # the cleanup's own bound
                await asyncio.Event().wait()  # a server that never answers
        except TimeoutError:
            return "gave up"
        return "answered"

    async def cancelled_caller() -> str:
        inner = asyncio.create_task(run_to_completion(hanging_io()))
        await asyncio.sleep(0)
        inner.cancel()  # the caller is cancelled while the cleanup hangs
        with pytest.raises(asyncio.CancelledError):
            await inner
        return "cancelled after the cleanup"

    # asyncio.wait() cancels nothing: a cleanup that cannot end fails here instead of hanging.
    for make in (lambda: run_to_completion(hanging_io()), cancelled_caller):
        task = asyncio.create_task(make())
        done, _ = await asyncio.wait({task}, timeout=GUARD)
        assert task in done, "a cleanup whose own I/O timed out did not end"
        assert task.result() in ("gave up", "cancelled after the cleanup")
