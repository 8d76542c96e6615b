"""Read-only binds, timeouts and errors that name the bind, on real databases."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.util import greenlet_spawn

from asyncbind import (
    AsyncBind,
    BindUnavailableError,
    ConfigError,
    ReadOnlyBindError,
    StatementTimeoutError,
)

Statements = Callable[[AsyncBind], list[tuple[Any, str]]]


@pytest.fixture
async def read_only_db(
    backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> tuple[AsyncBind, Any]:
    """A writable default bind and a read-only bind 'ro' over a database holding one row."""
    ro_url = await new_database(backend)
    writer = make_db(ro_url)
    writer.Table(
        "ref", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(20))
    )
    await writer.create_all()
    async with writer.session() as session:
        await session.execute(sa.text("INSERT INTO ref (id, name) VALUES (1, 'one')"))
        await session.commit()
    await writer.dispose()

    db = make_db(await new_database(backend), binds={"ro": {"url": ro_url, "read_only": True}})

    class Ref(db.Model):
        __bind_key__ = "ro"
        __tablename__ = "ref"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(20))

    return db, Ref


async def ref_names(db: AsyncBind) -> list[str]:
    async with db.engines["ro"].connect() as conn:
        return list((await conn.execute(sa.text("SELECT name FROM ref ORDER BY id"))).scalars())


async def test_read_only_bind_reads(read_only_db: tuple[AsyncBind, Any]) -> None:
    db, Ref = read_only_db
    async with db.session() as session:
        assert (await session.get(Ref, 1)).name == "one"


async def test_read_only_bind_refuses_writes_in_the_session(
    read_only_db: tuple[AsyncBind, Any], statements: Statements
) -> None:
    db, Ref = read_only_db
    log = statements(db)
    ref = Ref.__table__
    async with db.session() as session:
        for write, what in [
            (sa.insert(ref).values(id=2, name="two"), "INSERT"),
            (sa.update(ref).values(name="x"), "UPDATE"),
            (sa.delete(ref), "DELETE"),
            (sa.update(Ref).values(name="x"), "UPDATE"),
            (sa.schema.DropTable(ref), "DDL"),
        ]:
            with pytest.raises(ReadOnlyBindError) as info:
                await session.execute(write)
            assert info.value.key == "ro" and what in str(info.value)
        session.add(Ref(id=3, name="three"))
        with pytest.raises(ReadOnlyBindError, match=r"a flush writing model 'Ref'"):
            await session.flush()
        session.expunge_all()
        (await session.get(Ref, 1)).name = "changed"
        with pytest.raises(ReadOnlyBindError):
            await session.commit()
        session.expunge_all()
        assert (await session.get(Ref, 1)).name == "one"  # the session is still usable
    assert [
        sql for key, sql in log if key == "ro" and not sql.lstrip().upper().startswith("SELECT")
    ] == []
    assert await ref_names(db) == ["one"]


async def test_read_only_bind_refuses_raw_sql_in_the_database(
    read_only_db: tuple[AsyncBind, Any],
) -> None:
    db, _ = read_only_db
    async with db.session() as session:
        with pytest.raises(ReadOnlyBindError, match="its database refused a write"):
            await session.execute(
                sa.text("INSERT INTO ref (id, name) VALUES (9, 'raw')"),
                bind_arguments={"bind_key": "ro"},
            )
        await session.rollback()
    async with db.engines["ro"].connect() as conn:
        with pytest.raises(ReadOnlyBindError, match="its database refused a write"):
            await conn.execute(sa.text("UPDATE ref SET name = 'raw'"))
    assert await ref_names(db) == ["one"]


async def test_create_all_skips_and_drop_all_refuses_read_only_binds(
    read_only_db: tuple[AsyncBind, Any], caplog: pytest.LogCaptureFixture
) -> None:
    db, _ = read_only_db
    db.Table("extra", sa.Column("id", sa.Integer, primary_key=True), bind_key="ro")
    db.Table("mine", sa.Column("id", sa.Integer, primary_key=True))
    with caplog.at_level(logging.INFO, logger="asyncbind"):
        await db.create_all()
    assert "create_all: skipped read-only bind 'ro'" in caplog.text
    async with db.engines["ro"].connect() as conn:
        assert not await conn.run_sync(lambda c: sa.inspect(c).has_table("extra"))
    with pytest.raises(ReadOnlyBindError, match="drop_all"):
        await db.drop_all(bind_key=[None, "ro"])
    async with db.engines[None].connect() as conn:
        assert await conn.run_sync(lambda c: sa.inspect(c).has_table("mine"))
    await db.drop_all()
    async with db.engines[None].connect() as conn:
        assert not await conn.run_sync(lambda c: sa.inspect(c).has_table("mine"))
    assert await ref_names(db) == ["one"]


def test_read_only_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ConfigError, match="in-memory SQLite database cannot be read-only"):
        AsyncBind("sqlite://", binds={"ro": {"url": "sqlite://", "read_only": True}})


SLEEP = {"postgresql": "SELECT pg_sleep(30)", "mysql": "SELECT SLEEP(30)"}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_statement_timeout_names_the_bind_and_the_bind_recovers(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        "sqlite://",
        binds={"slow": {"url": await new_database(server), "statement_timeout": 0.3}},
    )
    async with db.session() as session:
        async with asyncio.timeout(20):
            with pytest.raises(StatementTimeoutError) as info:
                await session.execute(sa.text(SLEEP[server]), bind_arguments={"bind_key": "slow"})
        assert info.value.bind_key == "slow" and "statement_timeout of 0.3s" in str(info.value)
        assert isinstance(info.value, TimeoutError)
        await session.rollback()
        result = await session.execute(sa.text("SELECT 42"), bind_arguments={"bind_key": "slow"})
        assert result.scalar() == 42
    assert db.engines["slow"].sync_engine.pool.checkedout() == 0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "scheme", [pytest.param("postgresql", id="postgresql"), pytest.param("mysql", id="mysql")]
)
async def test_unreachable_bind_fails_within_connect_timeout_naming_it(
    scheme: str, silent_port: int, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        "sqlite://",
        binds={
            "silent": {
                "url": f"{scheme}://u:pw-secret@127.0.0.1:{silent_port}/db",
                "connect_timeout": 0.3,
            },
            "refused": f"{scheme}://u:pw-secret@127.0.0.1:1/db",
        },
    )
    async with db.session() as session:
        for key in ("silent", "refused"):
            async with asyncio.timeout(20):
                with pytest.raises(BindUnavailableError) as info:
                    await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})
            assert info.value.bind_key == key and f"Bind {key!r} is unavailable" in str(info.value)
            assert isinstance(info.value, sa_exc.OperationalError)
            assert "pw-secret" not in str(info.value) and "pw-secret" not in repr(info.value)
        assert (await session.execute(sa.text("SELECT 1"))).scalar() == 1  # the others still work


async def test_a_failing_close_where_the_dialect_has_no_terminate_is_not_retried_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # psycopg's async dialect has no do_terminate() of its own: SQLAlchemy's default closes the
    # connection instead. When that close fails, dropping the connection tries it once more and
    # reports the failure, instead of coming back to itself. SQLite stands in for such a
    # dialect, its terminate taken away and its connections' close failing.
    monkeypatch.setattr(SQLiteDialect_aiosqlite, "do_terminate", DefaultDialect.do_terminate)
    db = AsyncBind(f"sqlite:///{tmp_path / 'one.db'}")
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"))
    closes: list[Any] = []

    def failing_close(connection: Any) -> None:
        closes.append(connection)
        raise ConnectionResetError("the server reset the connection")

    monkeypatch.setattr(AsyncAdapt_aiosqlite_connection, "close", failing_close)
    with caplog.at_level(logging.ERROR):
        await db.dispose()
    monkeypatch.undo()
    assert len(closes) == 2, (
        f"close() was tried {len(closes)} times, not twice (politely, then to drop)"
    )
    connection, again = closes  # the polite close, then the drop
    assert again is connection
    assert [record.getMessage().split(" <")[0] for record in caplog.records] == [
        "Exception closing connection"
    ]
    await greenlet_spawn(connection.close)


def _pool_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """The pool's log records as (logger, level, message), object addresses blanked out."""
    return [
        (record.name, record.levelname, re.sub(r"0x[0-9a-f]+", "0x?", record.getMessage()))
        for record in caplog.records
        if record.name.startswith(("sqlalchemy.pool", "asyncbind"))
    ]


@pytest.mark.parametrize("echo_pool", [False, True, "debug"])
async def test_pools_log_when_and_how_sqlalchemys_own_pools_do(
    url: str, echo_pool: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    # As under logging.basicConfig(level=logging.INFO): SQLAlchemy's pools stay quiet unless
    # echo_pool is set; asyncbind's must do the same, under the same logger names.
    db = AsyncBind(url, engine_options={"echo_pool": echo_pool})
    plain = create_async_engine(db.engine.url, echo_pool=echo_pool)
    logged: dict[str, list[tuple[str, str, str]]] = {}
    for name, engine in (("asyncbind", db.engine), ("sqlalchemy", plain)):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            async with engine.connect() as conn:
                assert (await conn.execute(sa.text("SELECT 7"))).scalar() == 7
            await engine.dispose()
        logged[name] = _pool_records(caplog)
    assert logged["asyncbind"] == logged["sqlalchemy"]
    # Under echo_pool, a pool's logger is an InstanceLogger around the named one.
    loggers = [engine.sync_engine.pool.logger for engine in (db.engine, plain)]
    assert len({getattr(logger, "logger", logger).name for logger in loggers}) == 1
    if echo_pool:
        assert any("Pool disposed" in message for _, _, message in logged["asyncbind"])
    else:
        assert logged["asyncbind"] == []
