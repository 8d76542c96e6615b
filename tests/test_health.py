"""Health checks: ``db.ping()`` and ``db.pool_status()`` on real servers, a bind down, a bind hung."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, POSTGRESQL_URL, NewDatabase
from faultproxy import FaultProxy

from asyncbind import AsyncBind, BindHealth, NotConfiguredError, PoolStatus

MakeDb = Callable[..., AsyncBind]

SERVERS = {"postgresql": POSTGRESQL_URL, "mysql": MYSQL_URL}


async def test_every_bind_answers(url: str, new_database: NewDatabase, make_db: MakeDb) -> None:
    other = await new_database("sqlite")
    db = make_db(url, binds={"other": other})
    health = await db.ping()
    assert list(health) == [None, "other"]
    for key, found in health.items():
        assert isinstance(found, BindHealth)
        assert (found.key, found.ok, found.error) == (key, True, None)
        assert found.latency > 0
    assert str(health[None]).startswith("the default bind: ok in ")
    # The connection went back to the pool.
    assert all(status.checked_out in (0, None) for status in db.pool_status().values())


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
async def test_a_bind_down_is_reported_and_the_others_still_answer(
    server: str, new_database: NewDatabase, make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    """The server of bind 'down' refuses connections; the password never shows."""
    up = await new_database("sqlite")
    base = SERVERS[server]
    async with FaultProxy(base.host or "127.0.0.1", base.port or 0) as proxy:
        await proxy.set_mode("refuse")
        down = proxy.url_for(base).set(password="hunter2secret", database="nowhere")
        db = make_db(up, binds={"down": down.set(drivername=server)})
        with caplog.at_level(logging.DEBUG):
            health = await db.ping(timeout=10)
    assert health[None].ok and health[None].error is None
    found = health["down"]
    assert (found.key, found.ok) == ("down", False)
    assert found.error is not None and "BindUnavailableError" in found.error
    assert "'down'" in found.error
    text = found.error + str(found) + repr(found) + caplog.text
    assert "hunter2secret" not in text
    assert str(found).startswith("bind 'down': FAILED: ")


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
async def test_a_hung_server_is_bounded_by_the_timeout(
    server: str, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """A partition: the proxy accepts and never answers. ping() returns, says so, and leaves no
    connection behind."""
    base = SERVERS[server]
    database = sa.make_url(await new_database(server)).database
    async with FaultProxy(base.host or "127.0.0.1", base.port or 0) as proxy:
        await proxy.set_mode("blackhole")
        hung = proxy.url_for(base).set(drivername=server, database=database)
        up = await new_database("sqlite")
        db = make_db(up, binds={"hung": hung}, engine_options={"connect_timeout": 300})
        # Bounded by ping's own timeout, not by connect_timeout: a guard of 120 s catches a hang.
        health = await asyncio.wait_for(db.ping(timeout=0.5), 120)
        assert health[None].ok
        assert (health["hung"].ok, health["hung"].error) == (False, "no answer within 0.5 s")
        assert db.pool_status()["hung"].checked_out == 0
        await proxy.set_mode("pass")
        assert (await asyncio.wait_for(db.ping(timeout=30), 120))["hung"].ok


async def test_a_missing_database_is_an_answer_not_an_exception(
    url: str, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """A bind whose database does not exist is an answer too: not ok, with the server's reason."""
    missing = sa.make_url(url).set(database="asyncbind_no_such_database")
    if sa.make_url(url).get_backend_name() == "sqlite":
        missing = sa.make_url("sqlite:////nonexistent-folder/no.db")
    db = make_db(url, binds={"missing": missing})
    health = await db.ping()
    assert health[None].ok
    assert not health["missing"].ok and health["missing"].error


@pytest.mark.parametrize("bad", [0, -1, "2", True, None])
async def test_a_bad_timeout_is_refused(make_db: MakeDb, bad: Any) -> None:
    db = make_db("sqlite://")
    with pytest.raises(ValueError, match="timeout= must be a positive number of seconds"):
        await db.ping(timeout=bad)


async def test_pool_status_counts_checked_out_connections(url: str, make_db: MakeDb) -> None:
    db = make_db(url, engine_options={"pool_size": 3, "max_overflow": 2})
    async with db.engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))
        status = db.pool_status()[None]
        assert isinstance(status, PoolStatus)
        assert status.checked_out == 1
        assert status.pool == "AsyncAdaptedQueuePool"
        if status.size is not None:
            assert status.size == 3
            assert status.checked_in == 0
            assert status.overflow == 1 - 3
    after = db.pool_status()[None]
    assert after.checked_out == 0
    if after.checked_in is not None:
        assert after.checked_in == 1


async def test_an_unconfigured_asyncbind_says_so() -> None:
    db = AsyncBind()
    with pytest.raises(NotConfiguredError):
        await db.ping()
    with pytest.raises(NotConfiguredError):
        db.pool_status()


@pytest.mark.postgresql
async def test_a_pool_with_no_free_connection_is_not_blamed_on_the_server(
    new_database: NewDatabase, make_db: MakeDb
) -> None:
    db = make_db(
        await new_database("postgresql"), engine_options={"pool_size": 1, "max_overflow": 0}
    )
    async with db.session() as busy:
        await busy.execute(sa.text("SELECT 1"))  # holds the only connection
        health = await asyncio.wait_for(db.ping(timeout=0.5), 120)
    assert not health[None].ok
    assert health[None].error == (
        "no pooled connection became free within 0.5 s (1 checked out, none idle, the pool's "
        "limit reached): the server was not asked"
    )
    assert (await asyncio.wait_for(db.ping(timeout=30), 120))[None].ok
