"""``statement_timeout`` on real servers: a statement is abandoned past it, with an error naming the
bind; the connection is dropped, and the bind recovers. (Pre-ping and close under a network
partition: ``test_outages_partition.py``.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase

from asyncbind import AsyncBind, StatementTimeoutError

GUARD = 30
TIMEOUT = 0.5
SLEEP = {"postgresql": "SELECT pg_sleep(30)", "mysql": "SELECT SLEEP(30)"}
#: The same, with the seconds as a bound parameter (named, as text() takes them).
SLEEP_FOR = {"postgresql": "SELECT pg_sleep(:s)", "mysql": "SELECT SLEEP(:s)"}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def on_slow() -> dict[str, Any]:
    return {"bind_arguments": {"bind_key": "slow"}}


async def slow_db(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> tuple[AsyncBind, list[object]]:
    """An AsyncBind whose bind 'slow' has a statement_timeout; and the list of the connections
    its pool invalidates."""
    db = make_db(
        "sqlite://",
        binds={"slow": {"url": await new_database(server), "statement_timeout": TIMEOUT}},
    )
    invalidated: list[object] = []
    sa.event.listen(
        db.engines["slow"].sync_engine, "invalidate", lambda *args: invalidated.append(args)
    )
    return db, invalidated


def assert_timed_out(error: StatementTimeoutError, what: str) -> None:
    assert error.bind_key == "slow" and error.timeout == TIMEOUT
    assert isinstance(error, TimeoutError)
    assert f"Bind 'slow': {what} took longer than its statement_timeout of 0.5s" in str(error)
    assert "Roll the session back and retry" in str(error)


async def assert_recovers(db: AsyncBind) -> None:
    async with db.session() as session:
        result = await session.execute(sa.text("SELECT 42"), **on_slow())
        assert result.scalar() == 42
    assert db.engines["slow"].sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_statement_timeout_names_the_bind_and_the_bind_recovers(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db, invalidated = await slow_db(server, new_database, make_db)
    async with db.session() as session:
        async with asyncio.timeout(GUARD):
            with pytest.raises(StatementTimeoutError) as info:
                await session.execute(sa.text(SLEEP[server]), **on_slow())
        assert_timed_out(info.value, "a statement")
        await session.rollback()
        result = await session.execute(sa.text("SELECT 42"), **on_slow())
        assert result.scalar() == 42
    assert len(invalidated) == 1
    assert db.engines["slow"].sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
