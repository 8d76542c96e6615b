"""Read replicas on real replication: a PostgreSQL primary with a streaming hot standby, and a
MariaDB primary with a replica reading its binlog (private servers on ports 25510-25521, started
once for this module). Each statement says where it ran (``pg_is_in_recovery()``,
``@@server_id``). Routing details that need no replication run on SQLite files, a copy standing
for the replica."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from faultproxy import FaultProxy
from privateservers import (
    MariaDBServer,
    PostgreSQLServer,
    ServerNotInstalledError,
    find_mariadb,
    find_postgresql,
)
from replication import mariadb_replication, postgresql_replication, wait_until
from sqlalchemy.orm import Mapped, mapped_column
from test_cli import MODELS, PASSWORD, assert_no_password, cli, closed_port, write_module

from asyncbind import (
    AsyncBind,
    BindUnavailableError,
    BulkCopyError,
    ConfigError,
    ConnectionEndedError,
    NoReplicaError,
    PoolTimeoutError,
    ReadOnlyBindError,
    StatementTimeoutError,
    WrongEventLoopError,
    stopping,
)
from asyncbind.bulk import copy
from asyncbind.replicas import _is_read
from asyncbind.testing import rolled_back

PG_PORT = 25510  # and its standby on 25511
MARIADB_PORT = 25520  # and its replica on 25521

MakeDb = Callable[..., AsyncBind]


def _installed(find: Callable[[], Any]) -> None:
    try:
        find()
    except ServerNotInstalledError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def pg_pair() -> Iterator[tuple[PostgreSQLServer, PostgreSQLServer]]:
    _installed(find_postgresql)
    with postgresql_replication(PG_PORT) as pair:
        yield pair


@pytest.fixture(scope="module")
def mariadb_pair() -> Iterator[tuple[MariaDBServer, MariaDBServer]]:
    _installed(find_mariadb)
    with mariadb_replication(MARIADB_PORT) as pair:
        yield pair


@dataclass
class Replicated:
    """A database on a private primary, replicated to its replica."""

    backend: str
    primary: Any  # the servers
    replica: Any
    database: str
    paused: bool = False

    def config(self, **options: Any) -> dict[str, Any]:
        return {
            "url": self.primary.url(self.database),
            "replicas": [self.replica.url(self.database)],
            "connect_timeout": 2,
            "replica_check_interval": 0.2,
            **options,
        }

    @property
    def where(self) -> Any:
        """A column that says where the statement ran."""
        if self.backend == "postgresql":
            return sa.func.pg_is_in_recovery().label("where")
        return sa.literal_column("@@server_id").label("where")

    def on_replica(self, where: Any) -> bool:
        return bool(where) if self.backend == "postgresql" else int(where) == 2

    def sleep(self, seconds: float) -> Any:
        """A read that takes ``seconds`` on the server."""
        function = sa.func.pg_sleep if self.backend == "postgresql" else sa.func.sleep
        return sa.select(function(seconds))

    @property
    def connection_id(self) -> Any:
        """A column with the server's id of the connection that runs the statement."""
        if self.backend == "postgresql":
            return sa.func.pg_backend_pid().label("id")
        return sa.func.connection_id().label("id")

    async def end_connection(self, on_replica: bool, connection: int) -> None:
        """End a connection as an administrator does, and wait until the server lists it no
        more."""
        if self.backend == "postgresql":
            await self.admin(on_replica, f"SELECT pg_terminate_backend({int(connection)})")
            listed = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(connection)}"
        else:
            await self.admin(on_replica, f"KILL {int(connection)}")
            listed = f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = {connection}"

        async def gone() -> bool:
            return not (await self.admin(on_replica, listed))[0][0]

        await wait_until(gone, f"connection {connection} ended")

    async def admin(self, on_replica: bool, *statements: str) -> list[Any]:
        """Run statements on the primary's or the replica's server; the last one's rows."""
        server = self.replica if on_replica else self.primary
        if self.backend == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(host="127.0.0.1", port=server.port, user="postgres")
            try:
                rows: list[Any] = []
                for statement in statements:
                    rows = list(await conn.fetch(statement))
                return rows
            finally:
                await conn.close()
        import aiomysql

        conn = await aiomysql.connect(host="127.0.0.1", port=server.port, user="root")
        try:
            async with conn.cursor() as cursor:
                for statement in statements:
                    await cursor.execute(statement)
                return list(await cursor.fetchall())
        finally:
            conn.close()

    async def pause(self) -> None:
        """Stop applying the primary's changes on the replica (they still arrive)."""
        self.paused = True
        if self.backend == "postgresql":
            await self.admin(True, "SELECT pg_wal_replay_pause()")
        else:
            await self.admin(True, "STOP SLAVE SQL_THREAD")

    async def resume(self) -> None:
        self.paused = False
        if self.backend == "postgresql":
            await self.admin(True, "SELECT pg_wal_replay_resume()")
        else:
            await self.admin(True, "START SLAVE SQL_THREAD")

    async def replicated(self, table: str, rows: int) -> None:
        """Wait until the replica's ``table`` has ``rows`` rows."""
        database = f"{self.database}." if self.backend == "mysql" else ""

        async def done() -> bool:
            if self.backend == "postgresql":
                import asyncpg

                try:
                    conn = await asyncpg.connect(
                        host="127.0.0.1",
                        port=self.replica.port,
                        user="postgres",
                        database=self.database,
                    )
                except asyncpg.InvalidCatalogNameError:
                    return False
                try:
                    return await conn.fetchval(f"SELECT count(*) FROM {table}") == rows
                except asyncpg.UndefinedTableError:
                    return False
                finally:
                    await conn.close()
            try:
                found = await self.admin(True, f"SELECT count(*) FROM {database}{table}")
            except Exception:  # the database or table has not arrived yet
                return False
            return bool(found[0][0] == rows)

        await wait_until(done, f"{rows} rows of {table!r} replicated")


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
async def rep(request: pytest.FixtureRequest) -> AsyncIterator[Replicated]:
    """A new database on the backend's private primary, made there and replicated."""
    backend = request.param
    pair = request.getfixturevalue("pg_pair" if backend == "postgresql" else "mariadb_pair")
    found = Replicated(backend, *pair, f"rep_{uuid.uuid4().hex[:10]}")
    await found.admin(False, f"CREATE DATABASE {found.database}")
    try:
        yield found
    finally:
        if found.paused:  # a test that paused replay and failed leaves it running again
            await found.resume()
        if backend == "postgresql":
            await found.admin(False, f"DROP DATABASE IF EXISTS {found.database} WITH (FORCE)")
        else:
            await found.admin(False, f"DROP DATABASE IF EXISTS {found.database}")


def add_item(db: AsyncBind) -> Any:
    class Item(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(40))

    return Item


async def items_db(rep: Replicated, make_db: MakeDb, **options: Any) -> tuple[AsyncBind, Any]:
    """An AsyncBind on ``rep`` with table 'item' holding row 1, replicated."""
    db = make_db({**rep.config(), **options})
    Item = add_item(db)
    await db.create_all()
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(Item).values(id=1, name="one"))
    await rep.replicated("item", 1)
    return db, Item


async def where(db: AsyncBind, statement: Any, rep: Replicated) -> str:
    async with db.session() as session:
        return (
            "replica"
            if rep.on_replica((await session.execute(statement)).one().where)
            else "primary"
        )


# -- on real replication ------------------------------------------------------------------------


async def test_reads_go_to_the_replica_and_writes_to_the_primary(
    rep: Replicated, make_db: MakeDb
) -> None:
    db, Item = await items_db(rep, make_db)
    async with db.session() as session:
        row = (await session.execute(sa.select(Item.name, rep.where))).one()
        assert row.name == "one" and rep.on_replica(row.where)
        assert (await session.get(Item, 1)).name == "one"
        await session.commit()

        # A flush, and Core DML: the standby would refuse them (read-only), the primary takes them.
        session.add(Item(id=2, name="two"))
        await session.commit()
        await session.execute(sa.insert(Item).values(id=3, name="three"))
        await session.execute(sa.update(Item).where(Item.id == 1).values(name="uno"))
        await session.execute(sa.delete(Item).where(Item.id == 2))
        await session.commit()
    async with db.engine.connect() as conn:  # the primary's engine
        assert (await conn.execute(sa.select(Item.id, Item.name).order_by(Item.id))).all() == [
            (1, "uno"),
            (3, "three"),
        ]
    await rep.replicated("item", 2)
    assert await where(db, sa.select(rep.where), rep) == "replica"


async def test_a_transaction_reads_its_own_writes_from_the_primary_until_it_ends(
    rep: Replicated, make_db: MakeDb
) -> None:
    db, Item = await items_db(rep, make_db)
    await rep.pause()  # the replica sees nothing new from now on
    async with db.session() as session:
        row = (await session.execute(sa.select(Item.name, rep.where))).one()
        assert rep.on_replica(row.where)
        session.add(Item(id=2, name="two"))
        await session.flush()
        # Written: every statement of this transaction goes to the primary, and sees the row.
        rows = (await session.execute(sa.select(Item.id, rep.where).order_by(Item.id))).all()
        assert [r.id for r in rows] == [1, 2] and not any(rep.on_replica(r.where) for r in rows)
        await session.commit()
        # The transaction ended: reads go to the replica again, which has not replayed it yet.
        rows = (await session.execute(sa.select(Item.id, rep.where).order_by(Item.id))).all()
        assert [r.id for r in rows] == [1] and rep.on_replica(rows[0].where)
        await session.rollback()
        # A Core write marks the transaction as written too.
        await session.execute(sa.update(Item).where(Item.id == 1).values(name="uno"))
        row = (await session.execute(sa.select(Item.name, rep.where).where(Item.id == 1))).one()
        assert row.name == "uno" and not rep.on_replica(row.where)
        await session.rollback()
        row = (await session.execute(sa.select(Item.name, rep.where).where(Item.id == 1))).one()
        assert row.name == "one" and rep.on_replica(row.where)
    await rep.resume()


async def test_a_write_through_the_session_connection_is_read_back_from_the_primary(
    rep: Replicated, make_db: MakeDb
) -> None:
    db, Item = await items_db(rep, make_db)
    await rep.pause()
    async with db.session() as session:
        conn = await session.connection()  # the primary's
        await conn.execute(sa.update(Item.__table__).values(name="written"))
        row = (await session.execute(sa.select(Item.name, rep.where))).one()
        assert row.name == "written" and not rep.on_replica(row.where)
        await session.rollback()
    await rep.resume()


async def test_the_rows_an_update_will_change_are_read_on_the_primary(
    rep: Replicated, make_db: MakeDb
) -> None:
    """synchronize_session="fetch": the ORM finds the rows an UPDATE changes with RETURNING
    (PostgreSQL), or with a SELECT before it (MariaDB has no UPDATE RETURNING). That SELECT is part
    of the write: on a replica that has not replayed row 2, the object would keep its old name."""
    db, Item = await items_db(rep, make_db)
    await rep.pause()
    async with db.engine.begin() as conn:  # the primary's engine: the replica never sees it
        await conn.execute(sa.insert(Item).values(id=2, name="two"))
    async with db.session() as session:
        async with db.primary():
            two = await session.get(Item, 2)
        assert two is not None and two.name == "two"
        await session.execute(
            sa.update(Item)
            .where(Item.name.in_(["one", "two"]))
            .values(name="changed")
            .execution_options(synchronize_session="fetch")
        )
        assert two.name == "changed"
        # Nothing of the UPDATE went to the replica, not even asking whether it has RETURNING.
        assert db.pool_status()[None].replicas[0].checked_out == 0
        await session.commit()
    async with db.engine.connect() as conn:
        assert (await conn.execute(sa.select(Item.name).order_by(Item.id))).scalars().all() == [
            "changed",
            "changed",
        ]
    await rep.resume()


async def test_locking_reads_go_to_the_primary(rep: Replicated, make_db: MakeDb) -> None:
    db, Item = await items_db(rep, make_db)
    assert await where(db, sa.select(Item.name, rep.where), rep) == "replica"
    assert await where(db, sa.select(Item.name, rep.where).with_for_update(), rep) == "primary"
    locked = sa.select(Item.name, rep.where).with_for_update(read=True)  # FOR SHARE
    assert await where(db, locked, rep) == "primary"
    async with db.session() as session:
        item = await session.get(Item, 1, with_for_update=True)
        assert item is not None
        # The lock was taken on the primary: the transaction has written (locked) there.
        assert not rep.on_replica((await session.execute(sa.select(rep.where))).scalar())


async def test_the_primary_can_be_asked_for(rep: Replicated, make_db: MakeDb) -> None:
    db, Item = await items_db(rep, make_db)
    read = sa.select(Item.name, rep.where)
    async with db.primary():
        assert await where(db, read, rep) == "primary"
    assert await where(db, read, rep) == "replica"
    assert await where(db, read.execution_options(use_primary=True), rep) == "primary"
    use_primary = {"use_primary": True}
    async with db.session() as session:  # given at the call, not on the statement
        assert not rep.on_replica(
            (await session.execute(read, execution_options=use_primary)).one().where
        )
        assert not rep.on_replica(
            await session.scalar(sa.select(rep.where), execution_options=use_primary)
        )
    await rep.pause()
    async with db.engine.begin() as conn:  # the primary's engine: the replica never sees it
        await conn.execute(sa.update(Item).values(name="changed"))
    async with db.session() as session:
        item = await session.get(Item, 1, execution_options=use_primary)
        assert item is not None and item.name == "changed"
    await rep.resume()


async def test_a_select_over_a_writing_cte_goes_to_the_primary(
    rep: Replicated, make_db: MakeDb
) -> None:
    if rep.backend != "postgresql":
        pytest.skip("MariaDB has no INSERT / UPDATE / DELETE in WITH")
    db, Item = await items_db(rep, make_db)
    changed = sa.update(Item).values(name="changed").returning(Item.id).cte("changed")
    async with db.session() as session:
        assert (await session.scalars(sa.select(changed.c.id))).all() == [1]
        await session.commit()
    async with db.engine.connect() as conn:  # the primary's engine
        assert (await conn.execute(sa.select(Item.name))).scalars().all() == ["changed"]


async def test_taking_a_value_from_a_sequence_goes_to_the_primary(
    rep: Replicated, make_db: MakeDb
) -> None:
    """nextval() advances the sequence: a write, which a standby refuses."""
    db = make_db(rep.config())
    ids = sa.Sequence("item_ids", metadata=db.metadatas[None])
    Item = add_item(db)
    await db.create_all()
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(Item).values(id=1, name="one"))
    await rep.replicated("item", 1)
    async with db.session() as session:
        assert await session.scalar(sa.select(ids.next_value())) == 1
        assert await session.scalar(sa.select(ids.next_value().label("id"))) == 2
        await session.commit()
    async with db.engine.connect() as conn:  # the primary's engine
        assert await conn.scalar(sa.select(ids.next_value())) == 3


async def test_two_phase_sessions_use_the_primary(rep: Replicated, make_db: MakeDb) -> None:
    """A standby cannot take part in a two-phase commit (PREPARE TRANSACTION, XA)."""
    db, Item = await items_db(rep, make_db)
    async with db.session(twophase=True) as session:
        row = (await session.execute(sa.select(Item.name, rep.where))).one()
        assert not rep.on_replica(row.where)


async def test_a_stopped_replica_falls_back_to_the_primary_and_rejoins(
    rep: Replicated, make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db, Item = await items_db(rep, make_db)
    read = sa.select(Item.name, rep.where)
    assert await where(db, read, rep) == "replica"  # a pooled replica connection now exists
    await rep.replica.astop()
    try:
        with caplog.at_level(logging.WARNING, logger="asyncbind"):
            # Not one read fails: the dead pooled connection and the refused new one are both
            # found before the statement is sent.
            for _ in range(5):
                assert await where(db, read, rep) == "primary"
        assert any("out of rotation" in r.getMessage() for r in caplog.records)
        health = await db.ping(timeout=3)
        assert health[None].ok and not health[None].replicas[0].ok
        assert "\n  replica 1 of the default bind: FAILED: " in str(health[None])
        strict = make_db(rep.config(replica_fallback=False))
        add_item(strict)
        async with strict.session() as session:
            with pytest.raises(NoReplicaError, match="no replica to read from"):
                await session.execute(sa.select(sa.literal(1)))
    finally:
        await rep.replica.astart()

    async def back() -> bool:
        return await where(db, read, rep) == "replica"

    await wait_until(back, "reads back on the restarted replica")
    assert (await db.ping(timeout=5))[None].replicas[0].ok


async def test_a_hung_replica_is_taken_out_after_connect_timeout(
    rep: Replicated, make_db: MakeDb
) -> None:
    """A replica that stops answering (a network partition: connections accepted, nothing
    forwarded) costs a read its connect_timeout, not the read itself."""
    async with FaultProxy("127.0.0.1", rep.replica.port) as proxy:
        config = rep.config(connect_timeout=1)
        config["replicas"] = [proxy.url_for(rep.replica.url(rep.database))]
        db, Item = await items_db(rep, make_db, **config)
        read = sa.select(Item.name, rep.where)
        assert await where(db, read, rep) == "replica"  # through the proxy
        await proxy.set_mode("blackhole")
        assert await where(db, read, rep) == "primary"  # the pooled connection's ping hangs
        assert await where(db, read, rep) == "primary"  # out of rotation: not even tried
        await proxy.set_mode("pass")

        async def back() -> bool:
            return await where(db, read, rep) == "replica"

        await wait_until(back, "reads back on the replica once it answers")
        await db.dispose()


async def test_a_statement_timeout_on_a_replica_names_the_replica(
    rep: Replicated, make_db: MakeDb
) -> None:
    """A statement that outlived statement_timeout on a replica names that replica, so that
    nobody goes to look at the primary; the primary's own timeout names the bind, as always."""
    replicas = [rep.replica.url(rep.database)] * 2  # round robin: one read on each
    db, _ = await items_db(rep, make_db, statement_timeout=0.5, replicas=replicas)
    timed_out = []
    for _ in range(2):
        async with db.session() as session:
            with pytest.raises(StatementTimeoutError) as caught:
                await session.execute(rep.sleep(5))
        timed_out.append(caught.value)
    assert sorted(error.replica for error in timed_out) == [1, 2]
    for error in timed_out:
        assert error.bind_key is None and error.timeout == 0.5
        assert str(error).startswith(
            f"Replica {error.replica} of the default bind: a statement took longer than its "
            "statement_timeout of 0.5s"
        )
    async with db.primary(), db.session() as session:
        with pytest.raises(StatementTimeoutError) as caught:
            await session.execute(rep.sleep(5))
    assert (caught.value.bind_key, caught.value.replica) == (None, 0)
    assert str(caught.value).startswith("The default bind: a statement took longer than")


async def test_a_replica_that_cannot_be_reached_is_named(
    rep: Replicated, make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    """The error of a replica that refuses connections names it, wherever it shows: raised by
    its engine, in the warning that takes it out of rotation, in the health report. A primary
    that cannot be reached is the bind, as always."""
    down = sa.make_url(rep.replica.url(rep.database)).set(port=closed_port())
    db, _ = await items_db(rep, make_db, replicas=[rep.replica.url(rep.database), down])
    with pytest.raises(BindUnavailableError) as caught:
        async with db.replica_engines[None][1].connect():
            pass
    assert (caught.value.bind_key, caught.value.replica) == (None, 2)
    assert str(caught.value).startswith("Replica 2 of the default bind is unavailable (")
    with caplog.at_level(logging.WARNING, logger="asyncbind"):
        for _ in range(2):  # one read is sent to replica 2 first, and goes on to replica 1
            assert await where(db, sa.select(rep.where), rep) == "replica"
    (warning,) = [r.getMessage() for r in caplog.records if "out of rotation" in r.getMessage()]
    assert warning.startswith("replica 2 (")
    assert "BindUnavailableError: Replica 2 of the default bind is unavailable (" in warning
    health = str((await db.ping(timeout=5))[None])
    assert "\n  replica 2 of the default bind: FAILED: BindUnavailableError: Replica 2 " in health

    primary_down = make_db({"url": down, "connect_timeout": 2})
    with pytest.raises(BindUnavailableError) as caught:
        async with primary_down.engine.connect():
            pass
    assert (caught.value.bind_key, caught.value.replica) == (None, 0)
    assert str(caught.value).startswith("The default bind is unavailable (")


async def test_a_replica_connection_its_server_ended_is_named(
    rep: Replicated, make_db: MakeDb
) -> None:
    db, Item = await items_db(rep, make_db)
    async with db.session() as session:
        first = (await session.execute(sa.select(Item.name, rep.where, rep.connection_id))).one()
        assert rep.on_replica(first.where)
        await rep.end_connection(True, first.id)
        with pytest.raises(ConnectionEndedError) as caught:
            await session.execute(sa.select(Item.name))  # the transaction's replica connection
        await session.rollback()
    assert (caught.value.bind_key, caught.value.replica) == (None, 1)
    assert str(caught.value).startswith("Replica 1 of the default bind: ")
    async with db.primary(), db.session() as session:
        first = (await session.execute(sa.select(Item.name, rep.where, rep.connection_id))).one()
        assert not rep.on_replica(first.where)
        await rep.end_connection(False, first.id)
        with pytest.raises(ConnectionEndedError) as caught:
            await session.execute(sa.select(Item.name))
        await session.rollback()
    assert caught.value.replica == 0
    assert str(caught.value).startswith("The default bind: ")


async def test_a_lagging_replica_is_skipped(rep: Replicated, make_db: MakeDb) -> None:
    db, Item = await items_db(rep, make_db, replica_max_lag=1)
    read = sa.select(Item.name, rep.where).where(Item.id == 1)
    assert await where(db, read, rep) == "replica"
    await rep.pause()
    async with db.engine.begin() as conn:  # WAL / binlog the replica receives but does not apply
        await conn.execute(sa.insert(Item).values(id=2, name="two"))

    async def on(place: str) -> bool:
        async with db.engine.begin() as conn:  # keeps the primary writing, so the lag grows
            await conn.execute(sa.update(Item).where(Item.id == 1).values(name=uuid.uuid4().hex))
        return await where(db, read, rep) == place

    await wait_until(lambda: on("primary"), "the lagging replica skipped")
    await rep.resume()
    await wait_until(lambda: on("replica"), "the replica back once it caught up")


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_two_servers_each_read_from_its_own_replica(
    pg_pair: Any, mariadb_pair: Any, make_db: MakeDb
) -> None:
    pg = Replicated("postgresql", *pg_pair, f"rep_{uuid.uuid4().hex[:10]}")
    my = Replicated("mysql", *mariadb_pair, f"rep_{uuid.uuid4().hex[:10]}")
    for found in (pg, my):
        await found.admin(False, f"CREATE DATABASE {found.database}")
    db = make_db(pg.config(), binds={"users": my.config()})
    try:

        class Post(db.Model):
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

        class User(db.Model):
            __bind_key__ = "users"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

        await db.create_all()
        await pg.replicated("post", 0)
        await my.replicated("user", 0)
        async with db.session() as session:
            assert (await session.execute(sa.select(Post.id, pg.where))).all() == []
            assert pg.on_replica((await session.execute(sa.select(pg.where))).scalar())
            by_key = {"bind_key": "users"}
            on_users = await session.execute(sa.select(my.where), bind_arguments=by_key)
            assert my.on_replica(on_users.scalar())
            # Writing to 'users' sends its reads to its primary; the default bind still reads
            # from its replica.
            session.add(User(id=1))
            await session.flush()
            users = (await session.execute(sa.select(User.id, my.where))).one()
            assert users.id == 1 and not my.on_replica(users.where)
            assert pg.on_replica((await session.execute(sa.select(pg.where))).scalar())
            await session.commit()
        pools = db.pool_status()
        assert pools[None].replicas[0].checked_out == 0
        assert pools["users"].replicas[0].checked_out == 0
    finally:
        await db.dispose()
        await pg.admin(False, f"DROP DATABASE IF EXISTS {pg.database} WITH (FORCE)")
        await my.admin(False, f"DROP DATABASE IF EXISTS {my.database}")


async def test_cancelled_reads_leave_no_connection_checked_out(
    rep: Replicated, make_db: MakeDb
) -> None:
    """Reads cancelled at every point (connecting to the replica, measuring its lag, running,
    closing) give every connection back, on the primary and the replica."""
    db, Item = await items_db(rep, make_db, replica_max_lag=30, replica_check_interval=0.001)

    async def request(key: int) -> None:
        async with db.session() as session:
            await session.execute(sa.select(Item.name, rep.where).where(Item.id == 1))
            if key % 3 == 0:
                session.add(Item(id=1000 + key, name="x"))
                await session.flush()
                await session.execute(sa.select(Item.name).where(Item.id == 1))

    for delay in (0.0, 0.001, 0.003, 0.01, 0.03):
        tasks = [asyncio.create_task(request(n)) for n in range(30)]
        await asyncio.sleep(delay)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # MariaDB: the statements cut short are ended on their servers over a connection of each.
    await stopping.settle([db.engine, *db.replica_engines[None]])
    pools = db.pool_status()[None]
    assert pools.checked_out == 0 and pools.replicas[0].checked_out == 0
    assert await where(db, sa.select(Item.name, rep.where).where(Item.id == 1), rep) == "replica"


# -- routing, on SQLite files -------------------------------------------------------------------


@dataclass
class Files:
    db: AsyncBind
    Item: Any


async def sqlite_db(tmp_path: Path, make_db: MakeDb, replicas: int = 1, **options: Any) -> Files:
    """A primary file whose row 1 is named 'primary', and copies of it named 'replica N'."""
    primary = tmp_path / "primary.sqlite"
    setup = make_db(f"sqlite:///{primary}")
    Item = add_item(setup)
    await setup.create_all()
    async with setup.engine.begin() as conn:
        await conn.execute(sa.insert(Item).values(id=1, name="primary"))
    urls = []
    for number in range(1, replicas + 1):
        copy = tmp_path / f"replica{number}.sqlite"
        shutil.copy(primary, copy)
        async with make_db(f"sqlite:///{copy}").engine.begin() as conn:
            await conn.execute(sa.text(f"UPDATE item SET name = 'replica {number}'"))
        urls.append(f"sqlite:///{copy}")
    await setup.dispose()
    db = make_db({"url": f"sqlite:///{primary}", "replicas": urls, **options})
    return Files(db, add_item(db))


async def name_read(files: Files, statement: Any = None) -> str:
    async with files.db.session() as session:
        return str(
            await session.scalar(statement if statement is not None else sa.select(files.Item.name))
        )


@pytest.mark.sqlite
async def test_round_robin_takes_each_replica_in_turn(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db, replicas=2)
    seen = [await name_read(files) for _ in range(4)]
    assert sorted(seen[:2]) == ["replica 1", "replica 2"] and seen[2:] == seen[:2]


@pytest.mark.sqlite
async def test_random_choice_uses_every_replica(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db, replicas=2, replica_choice="random")
    seen = {await name_read(files) for _ in range(200)}
    assert seen == {"replica 1", "replica 2"}


@pytest.mark.sqlite
async def test_a_transaction_keeps_its_replica(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db, replicas=2)
    async with files.db.session() as session:
        names = {await session.scalar(sa.select(files.Item.name)) for _ in range(4)}
        assert len(names) == 1
        assert (
            files.db.pool_status()[None].replicas[0].checked_out
            + files.db.pool_status()[None].replicas[1].checked_out
            == 1
        )
    # Closed with the session: no replica connection is left checked out.
    replicas = files.db.pool_status()[None].replicas
    assert all(r.checked_out == 0 for r in replicas)
    assert sum(r.checked_in for r in replicas) == 1
    await files.db.dispose()
    assert all(r.checked_in == 0 for r in files.db.pool_status()[None].replicas)


@pytest.mark.sqlite
async def test_sessions_of_the_rollback_fixture_use_its_connections(
    tmp_path: Path, make_db: MakeDb
) -> None:
    files = await sqlite_db(tmp_path, make_db)
    async with rolled_back(files.db):
        assert await name_read(files) == "primary"
    assert await name_read(files) == "replica 1"


@pytest.mark.sqlite
async def test_a_read_that_autoflushes_reads_from_the_primary(
    tmp_path: Path, make_db: MakeDb
) -> None:
    files = await sqlite_db(tmp_path, make_db)
    Item = files.Item
    async with files.db.session() as session:
        assert await session.scalar(sa.select(Item.name)) == "replica 1"
        session.add(Item(id=2, name="new"))
        # The autoflush before this read writes to the primary, so the read goes there too.
        assert await session.scalar(sa.select(Item.name).where(Item.id == 2)) == "new"
        assert await session.scalar(sa.select(Item.name).where(Item.id == 1)) == "primary"


@pytest.mark.sqlite
@pytest.mark.parametrize("synchronize", ["fetch", "evaluate", "auto"])
@pytest.mark.parametrize("run", ["execute", "scalars"])
async def test_updates_and_deletes_read_nothing_from_a_replica(
    tmp_path: Path, make_db: MakeDb, synchronize: str, run: str
) -> None:
    files = await sqlite_db(tmp_path, make_db)
    Item = files.Item
    async with files.db.session() as session:
        async with files.db.primary():
            item = await session.get(Item, 1)
        assert item is not None and item.name == "primary"
        method = getattr(session, run)
        await method(
            sa.update(Item)
            .where(Item.name == "primary")
            .values(name="changed")
            .returning(Item.id)
            .execution_options(synchronize_session=synchronize)
        )
        assert item.name == "changed"
        await method(
            sa.delete(Item)
            .where(Item.id == 1)
            .returning(Item.id)
            .execution_options(synchronize_session=synchronize)
        )
        assert files.db.pool_status()[None].replicas[0].checked_out == 0
        assert not session.sync_session.on_primary
        await session.rollback()
        # The session reads from the replica again.
        assert await session.scalar(sa.select(Item.name)) == "replica 1"
        assert files.db.pool_status()[None].replicas[0].checked_out == 1


@pytest.mark.sqlite
async def test_text_and_statements_without_tables(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db)
    # text() may write: the primary.
    assert await name_read(files, sa.text("SELECT name FROM item")) == "primary"
    assert await name_read(files, sa.select(sa.literal("x"))) == "x"


@pytest.mark.sqlite
async def test_union_reads_from_the_replica(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db)
    Item = files.Item
    union = sa.union(sa.select(Item.name), sa.select(Item.name).where(Item.id == 2))
    assert await name_read(files, union) == "replica 1"


@pytest.mark.sqlite
async def test_a_replica_that_cannot_be_opened_is_skipped(
    tmp_path: Path, make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    files = await sqlite_db(tmp_path, make_db, replicas=2)
    (tmp_path / "replica1.sqlite").unlink()  # read-only mode does not create it
    with caplog.at_level(logging.WARNING, logger="asyncbind"):
        assert {await name_read(files) for _ in range(4)} == {"replica 2"}
    warnings = [r.getMessage() for r in caplog.records if "out of rotation" in r.getMessage()]
    assert len(warnings) == 1 and "replica 1" in warnings[0]


@pytest.mark.sqlite
async def test_with_no_replica_left_reads_fall_back_to_the_primary(
    tmp_path: Path, make_db: MakeDb
) -> None:
    files = await sqlite_db(tmp_path, make_db)
    (tmp_path / "replica1.sqlite").unlink()
    assert [await name_read(files) for _ in range(3)] == ["primary"] * 3


@pytest.mark.sqlite
async def test_without_fallback_no_replica_is_an_error(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db, replica_fallback=False)
    (tmp_path / "replica1.sqlite").unlink()
    with pytest.raises(NoReplicaError) as caught:
        await name_read(files)
    assert caught.value.key is None and "replica 1" in str(caught.value)
    assert "replica_fallback" in str(caught.value)


@pytest.mark.sqlite
async def test_writes_through_a_replica_engine_are_refused(tmp_path: Path, make_db: MakeDb) -> None:
    """The replica engines are read-only: a write that reached one would be refused."""
    files = await sqlite_db(tmp_path, make_db)
    (engine,) = files.db.replica_engines[None]
    async with engine.connect() as conn:
        with pytest.raises(ReadOnlyBindError) as refused:
            await conn.execute(sa.update(files.Item.__table__).values(name="x"))
        assert (refused.value.key, refused.value.replica, refused.value.sent) == (None, 1, False)
        message = str(refused.value)
        assert message.startswith("Replica 1 of the default bind is read-only, so an UPDATE ")
        assert "send writes to the primary" in message and "drop 'read_only'" not in message
        with pytest.raises(ReadOnlyBindError) as refused:  # raw SQL: the database refuses it
            await conn.execute(sa.text("UPDATE item SET name = 'x'"))
        assert (refused.value.replica, refused.value.sent) == (1, True)
        assert str(refused.value).startswith(
            "Replica 1 of the default bind is read-only, and its database refused a write"
        )
        await conn.rollback()
    async with files.db.session() as session:  # the bind itself is not read-only
        await session.execute(sa.update(files.Item.__table__).values(name="y"))
        await session.commit()


@pytest.mark.sqlite
async def test_a_replica_pool_that_stays_busy_is_named(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db, pool_size=1, max_overflow=0, pool_timeout=0.1)
    (engine,) = files.db.replica_engines[None]
    for _ in range(2):  # and again in the pool that dispose() makes
        async with engine.connect():
            with pytest.raises(PoolTimeoutError) as caught:
                async with engine.connect():
                    pass
        assert (caught.value.bind_key, caught.value.replica) == (None, 1)
        assert str(caught.value).startswith(
            "Replica 1 of the default bind: every connection of its pool stayed in use for 0.1s "
            "(pool_timeout; pool_size 1, max_overflow 0)"
        )
        await engine.dispose()


@pytest.mark.sqlite
def test_a_replica_used_from_another_event_loop_is_named(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "replica.sqlite").close()
    db = AsyncBind(
        {
            "url": f"sqlite:///{tmp_path / 'primary.sqlite'}",
            "replicas": [f"sqlite:///{tmp_path / 'replica.sqlite'}"],
        }
    )
    (engine,) = db.replica_engines[None]

    async def use() -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.select(sa.literal(1)))

    with asyncio.Runner() as first:
        first.run(use())
        try:
            with asyncio.Runner() as second, pytest.raises(WrongEventLoopError) as caught:
                second.run(use())
        finally:
            first.run(db.dispose())
    assert (caught.value.bind_key, caught.value.replica) == (None, 1)
    assert str(caught.value).startswith(
        "Replica 1 of the default bind has connections that belong to another event loop"
    )


@pytest.mark.sqlite
async def test_bulk_copies_name_the_replica_they_read_from_or_would_write_to(
    tmp_path: Path, make_db: MakeDb
) -> None:
    files = await sqlite_db(tmp_path, make_db)
    (replica,) = files.db.replica_engines[None]
    table = files.Item.__table__
    with pytest.raises(ReadOnlyBindError) as refused:
        await copy(table, table, source_engine=files.db.engine, target_engine=replica)
    assert (refused.value.key, refused.value.replica) == (None, 1)
    assert str(refused.value).startswith(
        "Replica 1 of the default bind is read-only, so a bulk copy into table 'item' was refused"
    )
    # A table the replica does not have (yet): the failed read names the replica.
    newer = sa.Table("newer", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    async with files.db.engine.begin() as conn:
        await conn.run_sync(newer.create)
    with pytest.raises(BulkCopyError, match="Reading the rows for table 'newer' from replica 1 "):
        await copy(newer, newer, source_engine=replica, target_engine=files.db.engine)


def test_locking_is_seen_on_selects() -> None:
    """``_is_read`` reads SQLAlchemy's private ``_for_update_arg``: this fails if that changes."""
    table = sa.table("t", sa.column("id"))
    assert _is_read(sa.select(table))
    assert not _is_read(sa.select(table).with_for_update())
    assert not _is_read(sa.select(table).with_for_update(read=True))
    assert _is_read(sa.union(sa.select(table), sa.select(table)))
    assert not _is_read(sa.insert(table))
    assert not _is_read(sa.text("SELECT 1"))
    changed = sa.update(table).values(id=2).returning(table.c.id).cte("changed")
    added = sa.insert(table).values(id=3).returning(table.c.id).cte("added")
    assert not _is_read(sa.select(changed.c.id))
    assert not _is_read(sa.select(table).where(table.c.id.in_(sa.select(added.c.id))))
    assert not _is_read(sa.select(table).add_cte(changed))
    assert _is_read(sa.select(sa.select(table).cte("plain").c.id))
    assert not _is_read(sa.select(sa.Sequence("ids").next_value()))


@pytest.mark.sqlite
async def test_get_bind_outside_a_statement_does_no_io(tmp_path: Path, make_db: MakeDb) -> None:
    files = await sqlite_db(tmp_path, make_db)
    async with files.db.session() as session:
        bind = session.get_bind(clause=sa.select(files.Item))
        assert bind is files.db.engine.sync_engine
    assert all(r.checked_out == 0 for r in files.db.pool_status()[None].replicas)


# -- configuration ----------------------------------------------------------------------------


def test_repr_hides_replica_passwords() -> None:
    db = AsyncBind(
        {
            "url": "postgresql://app:s3cret@db1/app",
            "replicas": ["postgresql://app:s3cret2@db2/app", "postgresql://app:s3cret3@db3/app"],
        }
    )
    for text in (repr(db), repr(db.bind_configs[None])):
        assert "s3cret" not in text and "db2" in text and "db3" in text


def test_replicas_from_flask_style_config_and_the_environment() -> None:
    flask = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": "postgresql://db1/app",
            "SQLALCHEMY_BINDS": {
                "users": {"url": "mysql://db1/users", "replicas": ["mysql://db2/users"]}
            },
        }
    )
    assert [u.host for u in flask.bind_configs["users"].replicas] == ["db2"]
    default = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": {
                "url": "postgresql://db1/app",
                "replicas": ["postgresql://db2/app"],
            }
        }
    )
    assert [u.host for u in default.bind_configs[None].replicas] == ["db2"]
    env = AsyncBind.from_env(
        {
            "ASYNCBIND_DATABASE_URL": "postgresql://db1/app",
            "ASYNCBIND_DATABASE_REPLICAS": "postgresql://db2/app, postgresql://db3/app",
            "ASYNCBIND_BIND_USERS": "mysql://db1/users",
            "ASYNCBIND_REPLICAS_USERS": "mysql://db2/users",
            "ASYNCBIND_BINDS": '{"logs": {"url": "mysql://db1/logs", "replicas": ["mysql://db4/logs"],'
            ' "replica_choice": "random"}}',
        }
    )
    assert [u.host for u in env.bind_configs[None].replicas] == ["db2", "db3"]
    assert [u.host for u in env.bind_configs["users"].replicas] == ["db2"]
    assert env.bind_configs["logs"].replica_choice == "random"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"url": "sqlite://", "replicas": "sqlite:///r.db"}, "'replicas' in its options is str"),
        ({"url": "sqlite:///p.db", "replicas": [3]}, "replica 1 is a int"),
        (
            {"url": "postgresql://h/db", "replicas": ["mysql://h/db"]},
            "replica 1 is a 'mysql' database but the primary is 'postgresql'",
        ),
        (
            {"url": "sqlite:///p.db", "replicas": [], "replica_choice": "fastest"},
            "'replica_choice' is 'fastest'; expected 'round_robin' or 'random'",
        ),
        (
            {"url": "sqlite:///p.db", "replicas": [], "replica_max_lag": -1},
            "'replica_max_lag' in its options is -1; expected a positive number",
        ),
        (
            {"url": "sqlite:///p.db", "replicas": ["sqlite:///r.db", "sqlite://"]},
            "Replica 2 of the default bind: an in-memory SQLite database cannot be read-only "
            "(it starts empty). Point the replica at a copy of the bind's database file.",
        ),
        (
            {"url": "mysql+aiomysql://u:p@h/db", "replicas": ["mysql+aiomysql://u:\u20ac@h/db"]},
            "Replica 1 of the default bind: its password has characters outside latin-1",
        ),
        (
            {
                "url": "mysql+asyncmy://h/db",
                "connect_args": {"read_timeout": 5},
                "replicas": ["mysql+aiomysql://h/db"],
            },
            "Replica 1 of the default bind: connect_args key 'read_timeout' is not an argument "
            "of its driver, 'aiomysql'. A replica connects with its bind's connect_args",
        ),
    ],
    ids=["string", "not-a-url", "other-backend", "choice", "lag", "in-memory", "latin-1", "driver"],
)
def test_bad_replica_config(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        AsyncBind(config)


def test_replicas_are_per_bind_and_need_a_bind() -> None:
    with pytest.raises(ConfigError, match="belongs to one bind"):
        AsyncBind("sqlite://", engine_options={"replicas": ["sqlite://"]})
    with pytest.raises(ConfigError, match="ASYNCBIND_REPLICAS_USERS lists replicas of a bind"):
        AsyncBind.from_env({"ASYNCBIND_REPLICAS_USERS": "mysql://db2/users"})


@pytest.mark.sqlite
@pytest.mark.postgresql
async def test_the_check_command_reports_each_replica(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    users = await new_database("postgresql")
    down = f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/nowhere"
    binds = {"users": {"url": users, "replicas": [users, down]}}
    main = await new_database("sqlite")
    write_module(tmp_path, "config", MODELS.format(main=main, binds=binds))
    run = await cli(tmp_path, "check", "--app", "config", "--timeout", "30")
    assert run.status == 1, run.err
    assert [line.split(":")[0] for line in run.lines] == [
        "the default bind",
        "bind 'users'",
        "  replica 1 of bind 'users'",
        "  replica 2 of bind 'users'",
    ]
    assert ": ok in " in run.lines[2] and ": FAILED: " in run.lines[3]
    assert_no_password(run)
