"""Outages: one bind goes down under load, the other keeps working, and the first comes back.

A fault proxy (``tests/faultproxy.py``) sits in front of one bind, PostgreSQL or MariaDB. Workers
keep querying both binds while the proxy cuts that bind: the server goes away (existing
connections reset, new ones refused), connections are reset mid-query, or the network becomes
slower than the bind's timeouts. Then the proxy is restored.

- Every request to the healthy bind succeeds, before, during and after the outage.
- Every request to the cut bind started during the outage fails, with
  :class:`~asyncbind.BindUnavailableError` (:class:`~asyncbind.ConnectionEndedError` for a
  connection reset while in use) or :class:`~asyncbind.StatementTimeoutError` naming the bind, and
  none hangs (a generous guard turns a hang into a failure).
- After the restore, the bind recovers by itself: requests succeed again, a burst that uses the
  whole pool succeeds, and no connection stays checked out.
- Disposing of a pool whose idle connections the server has reset closes each of them, with
  nothing logged; a dispose cancelled while a goodbye is pending still closes its connection.

The binds use the recommended settings for an outage: ``pool_pre_ping``, ``connect_timeout`` and
``statement_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, POSTGRESQL_URL, NewDatabase
from faultproxy import FaultProxy
from serverstate import server_fetch

from asyncbind import (
    AsyncBind,
    AsyncBindError,
    BindUnavailableError,
    ConnectionEndedError,
    StatementTimeoutError,
)

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]

#: Bound on one request: far above every configured timeout, so only a hang reaches it.
GUARD = 30.0
#: The cut bind's timeouts: far above what a connection or a short statement takes even on a
#: loaded machine (through the proxy, in the test's own event loop), so that only the outage
#: trips them.
CONNECT_TIMEOUT = 3.0
STATEMENT_TIMEOUT = 3.0
POOL = {"pool_size": 3, "max_overflow": 3}
#: Workers per bind: as many as the pool holds, so no request waits on the pool itself.
WORKERS = POOL["pool_size"] + POOL["max_overflow"]
BACKENDS = {"pg": "postgresql", "maria": "mysql"}
SLEEP = {"postgresql": "SELECT pg_sleep(0.05)", "mysql": "SELECT SLEEP(0.05)"}
#: How long the load runs at least in each phase (the load, not an assertion); a phase also lasts
#: until every bind has answered in it, however slow the machine.
PHASE = {"before": 0.5, "cut": 4.5, "after": 1.0}


@dataclass
class Outcome:
    key: str
    phase: str
    error: BaseException | None = None
    hung: bool = False
    ended: str = ""


@dataclass
class Load:
    """Workers' requests and how each ended, by the phase it started in."""

    db: AsyncBind
    cut_key: str
    phase: str = "before"
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    resume: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, key: str, phase: str) -> list[Outcome]:
        """Requests to ``key`` that started in ``phase``; for "before", that also ended before the
        cut (a request in flight at the cut may fail or not)."""
        return [
            o
            for o in self.outcomes
            if o.key == key and o.phase == phase and (phase != "before" or o.ended == phase)
        ]

    async def drain(self) -> None:
        """Stop new requests to the cut bind and wait for those in flight to end.

        The outage is still on, so each of them can only fail or hang; a hang fails the test
        here, after the guard.
        """
        self.phase = "draining"
        self.resume.clear()
        try:
            await wait_until(lambda: not self.in_flight[self.cut_key])
        except TimeoutError:
            pytest.fail(
                f"{self.in_flight[self.cut_key]} request(s) to the cut bind "
                f"{self.cut_key!r} were still running {GUARD:g}s into the outage, "
                f"far past connect_timeout={CONNECT_TIMEOUT:g}s and "
                f"statement_timeout={STATEMENT_TIMEOUT:g}s: they hang."
            )

    def go(self, phase: str) -> None:
        self.phase = phase
        self.resume.set()

    async def run_phase(self, keys: list[str]) -> None:
        """Let the load run in the current phase for its time, and until each of ``keys`` has a
        request that started in it and ended."""
        phase = self.phase
        await asyncio.sleep(PHASE[phase])
        try:
            await wait_until(lambda: all(self.of(key, phase) for key in keys))
        except TimeoutError:
            pytest.fail(f"no request to {keys} ended in phase {phase!r} within {GUARD:g}s")


async def request(load: Load, key: str, n: int) -> None:
    outcome = Outcome(key, load.phase)
    load.in_flight[key] += 1
    try:
        async with asyncio.timeout(GUARD) as guard:
            async with load.db.session() as session:
                if n % 3 == 0:
                    table = load.db.metadatas[key].tables["pings"]
                    await session.execute(sa.insert(table).values(worker=n))
                    await session.commit()
                else:
                    sql = sa.text(SLEEP[BACKENDS[key]])
                    await session.execute(sql, bind_arguments={"bind_key": key})
    except TimeoutError as exc:
        if guard.expired():
            outcome.hung = True
        else:
            outcome.error = exc
    except Exception as exc:
        outcome.error = exc
    finally:
        load.in_flight[key] -= 1
    outcome.ended = load.phase
    load.outcomes.append(outcome)
    if outcome.error is not None:
        # A failing bind must not turn the load into a busy loop.
        await asyncio.sleep(0.02)


async def worker(load: Load, key: str, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        if key == load.cut_key and load.phase == "draining":
            await load.resume.wait()
            continue
        await request(load, key, n)
        n += 1


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (pool counters and sockets have no event to wait on) under the guard."""
    async with asyncio.timeout(GUARD):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def checked_out(db: AsyncBind) -> dict[str, int]:
    return {key: engine.pool.checkedout() for key, engine in db.engines.items()}  # type: ignore[misc,attr-defined]


def describe(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(
        "hung" if o.hung else "ok" if o.error is None else type(o.error).__name__ for o in outcomes
    )


def errors(outcomes: list[Outcome]) -> list[str]:
    """The errors among ``outcomes``, as text, for a failure message."""
    return [f"{type(o.error).__name__}: {o.error}" for o in outcomes if o.error is not None]


async def cut(proxy: FaultProxy, mode: str) -> None:
    if mode == "down":
        # The server went away: open connections are reset and new ones refused.
        await proxy.set_mode("refuse")
        proxy.reset_connections()
    elif mode == "reset":
        # Every connection is reset, mid-query for most of them, and so is every new one.
        await proxy.set_mode("reset")
        proxy.reset_connections()
    elif mode == "blackhole":
        await proxy.set_mode("blackhole")
    elif mode == "latency":
        await proxy.set_mode("pass", latency=2 * max(CONNECT_TIMEOUT, STATEMENT_TIMEOUT))
    else:
        raise AssertionError(mode)


@pytest.fixture(params=["pg", "maria"])
def cut_key(request: pytest.FixtureRequest) -> str:
    """The bind behind the fault proxy."""
    return str(request.param)


@pytest.fixture(params=["down", "reset", "latency"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def proxy(cut_key: str) -> Any:
    postgresql = BACKENDS[cut_key] == "postgresql"
    server = POSTGRESQL_URL if postgresql else MYSQL_URL
    port = server.port or (5432 if postgresql else 3306)
    async with FaultProxy(server.host or "127.0.0.1", port) as proxy:
        yield proxy


async def make_outage_db(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> AsyncBind:
    binds: dict[str, Any] = {}
    for key, backend in BACKENDS.items():
        url = sa.make_url(await new_database(backend))
        options: dict[str, Any] = {"pool_pre_ping": True, **POOL}
        if key == cut_key:
            url = proxy.url_for(url)
            options |= {"connect_timeout": CONNECT_TIMEOUT, "statement_timeout": STATEMENT_TIMEOUT}
        binds[key] = {"url": url, **options}
    db = make_db(binds=binds)
    for key in BACKENDS:
        db.Table(
            "pings",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("worker", sa.Integer),
            bind_key=key,
        )
    await db.create_all()
    return db


async def test_one_bind_down_the_other_unaffected_then_recovers(
    cut_key: str,
    mode: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    await run_outage(cut_key, mode, proxy, new_database, make_db)


async def run_outage(
    cut_key: str,
    mode: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    """Load on both binds; cut ``cut_key`` in ``mode``; restore it; check every request."""
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    healthy = next(k for k in BACKENDS if k != cut_key)
    load = Load(db, cut_key)
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            for key in BACKENDS:
                for _ in range(WORKERS):
                    group.create_task(worker(load, key, stop))
            await load.run_phase(list(BACKENDS))
            load.phase = "cutting"  # requests in flight now may fail or not
            await cut(proxy, mode)
            load.phase = "cut"
            await load.run_phase(list(BACKENDS))
            await load.drain()
            await proxy.restore()
            load.go("after")
            await load.run_phase(list(BACKENDS))
            stop.set()
    finally:
        await proxy.restore()  # so that a failure does not leave the teardown in the outage

    # The healthy bind never noticed.
    failed = [o for o in load.outcomes if o.key == healthy and (o.hung or o.error is not None)]
    assert failed == [], (describe(failed), errors(failed))
    for phase in ("before", "cut", "after"):
        assert load.of(healthy, phase), f"no request to {healthy!r} in phase {phase!r}"

    # The cut bind worked before the cut.
    before = load.of(cut_key, "before")
    assert before and describe(before) == Counter(ok=len(before)), errors(before)
    # During the outage every request to it failed (none hung, none waited the outage out),
    # with an error naming it.
    during = load.of(cut_key, "cut")
    assert during, "no request to the cut bind during the outage"
    expected = {"BindUnavailableError", "ConnectionEndedError", "StatementTimeoutError"}
    assert set(describe(during)) <= expected, describe(during)
    for outcome in during:
        error = outcome.error
        assert isinstance(error, BindUnavailableError | StatementTimeoutError), repr(error)
        assert isinstance(error, AsyncBindError)
        assert error.bind_key == cut_key
        assert f"Bind {cut_key!r}" in str(error)
        if isinstance(error, BindUnavailableError):
            assert error.__cause__ is not None

    # Once the proxy is restored the bind works again, from the first request on.
    after = load.of(cut_key, "after")
    assert after and describe(after) == Counter(ok=len(after)), errors(after)
    await assert_pool_healthy(db, cut_key)


async def assert_pool_healthy(db: AsyncBind, key: str) -> None:
    """No connection is left checked out, and a burst that needs the whole pool succeeds."""
    await wait_until(lambda: not any(checked_out(db).values()))

    async def one() -> int:
        async with db.session() as session:
            sql = sa.text(SLEEP[BACKENDS[key]].replace("0.05", "0.2") + ", 7")
            return int((await session.execute(sql, bind_arguments={"bind_key": key})).one()[-1])

    async with asyncio.timeout(GUARD):
        results = await asyncio.gather(*(one() for _ in range(WORKERS)))
    assert results == [7] * WORKERS
    assert checked_out(db) == dict.fromkeys(BACKENDS, 0)


async def test_connections_reset_mid_query_fail_fast_and_are_discarded(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    """Queries in flight when their connections are reset fail at once with
    ConnectionEndedError (a BindUnavailableError), and the next queries reconnect."""
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    slow = {"postgresql": "SELECT pg_sleep(20)", "mysql": "SELECT SLEEP(20)"}[BACKENDS[cut_key]]

    async def slow_query() -> None:
        async with db.session() as session:
            await session.execute(sa.text(slow), bind_arguments={"bind_key": cut_key})

    # statement_timeout would end them after 3s; the reset ends them first, once the server
    # runs every one of them.
    tasks = [asyncio.create_task(slow_query()) for _ in range(WORKERS)]
    database = db.get_engine(cut_key).url.database or ""
    try:
        async with asyncio.timeout(GUARD):
            while await running_sleeps(BACKENDS[cut_key], database) < WORKERS:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"the server never ran {WORKERS} queries of bind {cut_key!r} at once")
    assert proxy.reset_connections() == WORKERS
    async with asyncio.timeout(GUARD):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        assert isinstance(result, ConnectionEndedError), repr(result)
        assert isinstance(result, BindUnavailableError)
        assert result.bind_key == cut_key
        assert f"Bind {cut_key!r}: its connection was closed from the other end" in str(result)
    await assert_pool_healthy(db, cut_key)


async def running_sleeps(backend: str, database: str) -> int:
    """How many statements of ``database`` the server is running a long sleep in."""
    if backend == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep(20)%'"
        )
    else:
        sql = (
            "SELECT count(*) FROM information_schema.PROCESSLIST "
            "WHERE DB = %s AND INFO LIKE 'SELECT SLEEP(20)%%'"
        )
    return int((await server_fetch(backend, sql, database))[0][0])


async def connections_from_now_on(db: AsyncBind, key: str) -> list[Any]:
    """Empty ``key``'s pool; the driver connections it opens from then on are added to the list
    returned."""
    await db.dispose()
    opened: list[Any] = []

    def connected(dbapi_connection: Any, _record: Any) -> None:
        opened.append(dbapi_connection.driver_connection)

    sa.event.listen(db.get_engine(key).sync_engine, "connect", connected)
    return opened


def is_closed(connection: Any) -> bool:
    """Whether an asyncpg or aiomysql connection is closed."""
    return bool(connection.is_closed() if hasattr(connection, "is_closed") else connection.closed)


def saw_its_end(connection: Any) -> bool:
    """Whether an asyncpg or aiomysql connection is closed or has seen its socket reset (asyncpg
    then counts as closed; aiomysql does not, and its next write fails)."""
    if hasattr(connection, "is_closed"):
        return bool(connection.is_closed())
    return connection.closed or bool(connection._writer.transport.is_closing())


async def test_dispose_after_the_server_reset_idle_connections_closes_each_quietly(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restart or failover resets the connections idle in the pool. Disposing of the pool
    then closes every one of them (aiomysql's polite close fails and would keep the socket),
    with nothing logged, and the bind works again afterwards."""
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    opened = await connections_from_now_on(db, cut_key)

    async def one() -> None:
        async with db.session() as session:
            sql = sa.text(SLEEP[BACKENDS[cut_key]])
            await session.execute(sql, bind_arguments={"bind_key": cut_key})

    await asyncio.gather(*(one() for _ in range(WORKERS)))
    assert opened and checked_out(db)[cut_key] == 0
    assert proxy.reset_connections() >= 1
    await wait_until(lambda: all(saw_its_end(c) for c in opened))
    with caplog.at_level(logging.WARNING):
        await db.dispose()
    assert [record.getMessage() for record in caplog.records] == []
    assert [c for c in opened if not is_closed(c)] == []
    async with db.session() as session:
        sql = sa.text("SELECT 1")
        assert (await session.execute(sql, bind_arguments={"bind_key": cut_key})).scalar() == 1


async def test_a_dispose_cancelled_during_a_goodbye_still_closes_the_connection(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    opened = await connections_from_now_on(db, cut_key)
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": cut_key})
    (connection,) = opened
    goodbye_sent = asyncio.Event()

    async def goodbye_never_acknowledged(*_args: Any, **_kwargs: Any) -> None:
        goodbye_sent.set()
        await asyncio.Event().wait()

    driver = type(connection)
    polite = "close" if cut_key == "pg" else "ensure_closed"
    monkeypatch.setattr(driver, polite, goodbye_never_acknowledged)
    disposing = asyncio.create_task(db.get_engine(cut_key).dispose())
    async with asyncio.timeout(GUARD):
        await goodbye_sent.wait()
    disposing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await disposing
    monkeypatch.undo()
    assert is_closed(connection), (
        f"a cancelled dispose left the {driver.__module__} connection open"
    )


async def test_a_connection_reset_on_its_way_back_to_the_pool_is_dropped_quietly(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pool rolls each returned connection back. When the server (or the network) has reset
    it by then, the connection is dropped, never reused, and nothing is logged: the commit
    before it went through, and the next request gets a working connection."""
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    engine = db.get_engine(cut_key).sync_engine
    table = db.metadatas[cut_key].tables["pings"]
    invalidated: list[object] = []
    sa.event.listen(engine, "invalidate", lambda *args: invalidated.append(args))

    def reset_now(*_args: Any) -> None:
        assert proxy.reset_connections() == 1

    with caplog.at_level(logging.WARNING):
        sa.event.listen(engine, "reset", reset_now, insert=True)  # before the rollback
        try:
            async with db.session() as session:
                await session.execute(sa.insert(table).values(worker=7))
                await session.commit()
        finally:
            sa.event.remove(engine, "reset", reset_now)
        async with db.session() as session:
            workers = await session.execute(sa.select(table.c.worker))
            assert workers.scalars().all() == [7]
    assert [record.getMessage() for record in caplog.records] == []
    assert len(invalidated) == 1
    await assert_pool_healthy(db, cut_key)
