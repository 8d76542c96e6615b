"""Network partitions (a black-holed bind) and an exhausted pool, under the bind's timeouts.

- Pre-ping of an idle pooled connection is bounded by the bind's statement (or connect) timeout:
  past it the connection counts as dead and a new one is opened, within ``connect_timeout``.
- ``db.dispose()`` does not wait for a partitioned server to acknowledge each close: the first
  goodbye left unanswered for the close timeout is the only one waited for.
- A statement past ``statement_timeout`` drops its connection at once: no goodbye is sent to a
  server that has stopped answering (asyncpg's polite close would wait 2s more for it).
- A request waiting on an exhausted pool fails with ``PoolTimeoutError`` naming the bind.
"""

# ruff: noqa: F811  (the fixtures imported from test_outages are test arguments here)

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiomysql
import asyncpg
import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from faultproxy import FaultProxy
from serverstate import settled_connections
from test_outages import (  # noqa: F401  (fixtures)
    BACKENDS,
    CONNECT_TIMEOUT,
    GUARD,
    POOL,
    WORKERS,
    assert_pool_healthy,
    connections_from_now_on,
    cut_key,
    is_closed,
    make_outage_db,
    proxy,
    run_outage,
)

from asyncbind import (
    AsyncBind,
    BindUnavailableError,
    PoolTimeoutError,
    StatementTimeoutError,
    stopping,
)

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]


async def test_black_hole_under_load_fails_then_recovers(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    await run_outage(cut_key, "blackhole", proxy, new_database, make_db)


async def test_pre_ping_of_an_idle_connection_in_a_black_hole_fails_within_the_timeouts(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    db = await make_outage_db(cut_key, proxy, new_database, make_db)

    async def one() -> int:
        async with db.session() as session:
            sql = sa.text("SELECT 5")
            return int((await session.execute(sql, bind_arguments={"bind_key": cut_key})).scalar())

    # Idle connections in the pool, then the network black-holes.
    assert await asyncio.gather(*(one() for _ in range(WORKERS))) == [5] * WORKERS
    await proxy.set_mode("blackhole")
    try:
        async with asyncio.timeout(GUARD) as guard:
            with pytest.raises((BindUnavailableError, StatementTimeoutError)) as info:
                await one()
    except TimeoutError:
        if guard.expired():
            pytest.fail(
                f"A request to the black-holed bind {cut_key!r} was still waiting after {GUARD:g}s "
                f"(connect_timeout and statement_timeout are {CONNECT_TIMEOUT:g}s): pre-ping "
                "has no timeout."
            )
        raise
    finally:
        await proxy.restore()
    assert info.value.bind_key == cut_key and f"Bind {cut_key!r}" in str(info.value)
    await proxy.restore()
    assert await one() == 5
    await assert_pool_healthy(db, cut_key)


async def test_dispose_of_a_black_holed_bind_does_not_hang(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    async with db.session() as session:
        sql = sa.text("SELECT 1")
        await session.execute(sql, bind_arguments={"bind_key": cut_key})
    await proxy.set_mode("blackhole")
    try:
        async with asyncio.timeout(GUARD) as guard:
            await db.dispose()
    except TimeoutError:
        if guard.expired():
            pytest.fail(
                f"db.dispose() with bind {cut_key!r} black-holed was still waiting after {GUARD:g}s."
            )
        raise
    finally:
        await proxy.restore()
    async with db.session() as session:
        sql = sa.text("SELECT 1")
        assert (await session.execute(sql, bind_arguments={"bind_key": cut_key})).scalar() == 1


def count_goodbyes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The polite closes the drivers are asked for from now on while their connection is still
    open (the driver's name, one entry each)."""
    goodbyes: list[str] = []
    pg_close, my_close = asyncpg.Connection.close, aiomysql.Connection.ensure_closed

    async def asyncpg_close(self: asyncpg.Connection, **kwargs: Any) -> None:
        if not self.is_closed():
            goodbyes.append("asyncpg")
        await pg_close(self, **kwargs)

    async def aiomysql_close(self: aiomysql.Connection) -> None:
        if not self.closed:
            goodbyes.append("aiomysql")
        await my_close(self)

    monkeypatch.setattr(asyncpg.Connection, "close", asyncpg_close)
    monkeypatch.setattr(aiomysql.Connection, "ensure_closed", aiomysql_close)
    return goodbyes


def watch_goodbyes(monkeypatch: pytest.MonkeyPatch) -> dict[Any, str]:
    """How each polite close the drivers are asked for from now on ends, by driver connection
    (one still open when asked): "answered", or "cut short" (by a timeout or a cancellation)."""
    ends: dict[Any, str] = {}
    pg_close, my_close = asyncpg.Connection.close, aiomysql.Connection.ensure_closed

    async def goodbye(connection: Any, polite: Any, **kwargs: Any) -> None:
        try:
            await polite(connection, **kwargs)
        except asyncio.CancelledError:
            ends[connection] = "cut short"
            raise
        ends[connection] = "answered"

    async def asyncpg_close(self: asyncpg.Connection, **kwargs: Any) -> None:
        if self.is_closed():
            await pg_close(self, **kwargs)
        else:
            await goodbye(self, pg_close, **kwargs)

    async def aiomysql_close(self: aiomysql.Connection) -> None:
        if self.closed:
            await my_close(self)
        else:
            await goodbye(self, my_close)

    monkeypatch.setattr(asyncpg.Connection, "close", asyncpg_close)
    monkeypatch.setattr(aiomysql.Connection, "ensure_closed", aiomysql_close)
    return ends


async def test_dispose_of_a_black_holed_bind_waits_out_one_goodbye_at_most(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shutting down during a network partition: the pool holds several idle connections to a
    server that no longer answers. The first goodbye waits out the close timeout and the other
    connections are dropped without one, instead of each waiting its own timeout in turn (a
    pool of twenty would take twenty, past an orchestrator's kill deadline). Every connection
    is closed, and gone from the server once the network is back."""
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    opened = await connections_from_now_on(db, cut_key)
    all_in = asyncio.Barrier(WORKERS)

    async def one() -> None:
        async with db.session() as session:
            sql = sa.text("SELECT 1")
            await session.execute(sql, bind_arguments={"bind_key": cut_key})
            await all_in.wait()  # so that each session has a connection of its own

    async with asyncio.timeout(GUARD):
        await asyncio.gather(*(one() for _ in range(WORKERS)))
    assert len(opened) == WORKERS
    assert db.pool_status()[cut_key].checked_in == POOL["pool_size"]  # the overflow was closed
    goodbyes = watch_goodbyes(monkeypatch)
    await proxy.set_mode("blackhole")
    try:
        async with asyncio.timeout(GUARD):
            await db.dispose()
    finally:
        await proxy.restore()
    monkeypatch.undo()
    ends = [goodbyes[connection] for connection in opened if connection in goodbyes]
    assert ends.count("cut short") <= 1, ends
    assert [connection for connection in opened if not is_closed(connection)] == []
    backend = BACKENDS[cut_key]
    database = db.get_engine(cut_key).url.database or ""
    assert await settled_connections(backend, database, 0) == 0


async def test_statement_past_its_timeout_drops_the_connection_without_a_goodbye(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = await make_outage_db(cut_key, proxy, new_database, make_db)
    goodbyes_to_open_connections = count_goodbyes(monkeypatch)
    invalidated: list[object] = []
    engine = db.get_engine(cut_key).sync_engine
    sa.event.listen(engine, "invalidate", lambda *args: invalidated.append(args))
    session = db.session()
    try:
        on_cut = {"bind_arguments": {"bind_key": cut_key}}
        assert (await session.execute(sa.text("SELECT 1"), **on_cut)).scalar() == 1
        await proxy.set_mode("blackhole")
        async with asyncio.timeout(GUARD):
            with pytest.raises(StatementTimeoutError) as info:
                await session.execute(sa.text("SELECT 2"), **on_cut)
        assert info.value.bind_key == cut_key
        # The timed-out connection was invalidated, and nothing waited on the server to close it.
        assert len(invalidated) == 1
        assert goodbyes_to_open_connections == []
        await session.rollback()
    finally:
        await proxy.restore()
        await session.close()
    await assert_pool_healthy(db, cut_key)


async def test_a_cancelled_statement_on_a_silent_server_drops_its_connection_without_a_goodbye(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A statement that asyncio.timeout() (or db.ping()'s timeout) cuts short on a server that
    has stopped answering: SQLAlchemy invalidates its connection and asyncbind drops it at once.
    SQLAlchemy's own terminate would first say goodbye, and asyncpg waits 2 s for the answer,
    so the caller's timeout would end 2 s late."""
    url = proxy.url_for(sa.make_url(await new_database(BACKENDS[cut_key])))
    db = make_db(url)  # no statement_timeout: the caller's timeout is the only one
    goodbyes_to_open_connections = count_goodbyes(monkeypatch)
    invalidated: list[object] = []
    sa.event.listen(db.engine.sync_engine, "invalidate", lambda *args: invalidated.append(args))
    for attempt in ("session", "ping"):
        assert (await db.ping())[None].ok  # an idle connection in the pool, to be cut short
        await proxy.set_mode("blackhole")
        try:
            async with asyncio.timeout(GUARD):
                if attempt == "session":
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.5), db.session() as session:
                            await session.execute(sa.text("SELECT 2"))
                else:
                    assert not (await db.ping(timeout=0.5))[None].ok
        finally:
            await proxy.restore()
        assert len(invalidated) == 1, attempt
        assert goodbyes_to_open_connections == [], attempt
        invalidated.clear()
    await stopping.settle([db.engine])  # the statements given up on, ended on their server
    assert db.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_exhausted_pool_of_a_slow_bind_names_the_bind(
    cut_key: str,
    proxy: FaultProxy,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    backend = BACKENDS[cut_key]
    url = proxy.url_for(sa.make_url(await new_database(backend)))
    db = make_db(
        binds={
            cut_key: {
                "url": url,
                "pool_size": 1,
                "max_overflow": 0,
                "pool_timeout": 0.5,
                "statement_timeout": 5,
            }
        }
    )
    slow = {"postgresql": "SELECT pg_sleep(2)", "mysql": "SELECT SLEEP(2)"}[backend]

    async def one() -> None:
        async with db.session() as session:
            await session.execute(sa.text(slow), bind_arguments={"bind_key": cut_key})

    async with asyncio.timeout(GUARD):
        results = await asyncio.gather(one(), one(), return_exceptions=True)
    errors = [r for r in results if r is not None]
    assert len(errors) == 1, results
    assert isinstance(errors[0], PoolTimeoutError), repr(errors[0])
    assert isinstance(errors[0], sa.exc.TimeoutError)
    assert f"Bind {cut_key!r}" in str(errors[0])
