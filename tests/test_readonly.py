"""Read-only binds refuse writes on every path, before any SQL is sent; raw SQL that the read-only
connection refuses is reported as the same error; create_all() skips them and drop_all() refuses
them. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy.orm import Mapped, mapped_column

from asyncbind import AsyncBind, ConfigError, ReadOnlyBindError

Statements = Callable[[AsyncBind], list[tuple[Any, str]]]


@dataclass
class ReadOnly:
    db: AsyncBind
    #: A table 'ref' of the default bind. The read-only bind 'ro' has a table of the same name
    #: and shape, holding one row, so that its statements are valid there too when sent there.
    ref: sa.Table
    log: list[tuple[Any, str]]

    async def names(self) -> list[str]:
        """The names in the read-only database's 'ref', read on a connection of its own."""
        async with self.db.engines["ro"].connect() as conn:
            result = await conn.execute(sa.text("SELECT name FROM ref ORDER BY id"))
            return list(result.scalars())

    def sent_to_ro(self) -> list[str]:
        return [sql for key, sql in self.log if key == "ro"]

    def writes_sent_to_ro(self) -> list[str]:
        verbs = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER")
        return [sql for sql in self.sent_to_ro() if sql.lstrip().upper().startswith(verbs)]


@pytest.fixture
async def ro(
    backend: str,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    statements: Statements,
) -> ReadOnly:
    ro_url = await new_database(backend)
    writer = make_db(ro_url)
    writer.Table(
        "ref", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(20))
    )
    await writer.create_all()
    async with writer.engine.begin() as conn:
        await conn.execute(sa.text("INSERT INTO ref (id, name) VALUES (1, 'one')"))
    await writer.dispose()

    db = make_db(await new_database(backend), binds={"ro": {"url": ro_url, "read_only": True}})
    ref = db.Table(
        "ref", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(20))
    )
    await db.create_all()
    return ReadOnly(db, ref, statements(db))


def writes(ref: sa.Table) -> list[tuple[Any, str]]:
    """Core writes of every kind, with a word their refusal must name."""
    other = sa.Table("other", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    return [
        (sa.insert(ref).values(id=2, name="two"), "an INSERT statement on table 'ref'"),
        (sa.update(ref).values(name="x"), "an UPDATE statement on table 'ref'"),
        (sa.delete(ref), "a DELETE statement on table 'ref'"),
        (sa.schema.CreateTable(other), "DDL on 'other'"),
        (sa.schema.DropTable(ref), "DDL on 'ref'"),
    ]


def assert_refused(info: pytest.ExceptionInfo[ReadOnlyBindError], what: str) -> None:
    assert info.value.key == "ro"
    assert info.value.sent is False
    assert what in str(info.value) and "before any SQL was sent" in str(info.value)


async def test_explicit_bind_key_and_bind_are_refused_before_any_sql(ro: ReadOnly) -> None:
    """``bind_arguments`` naming the read-only bind, its engine or one of its connections."""
    engine = ro.db.engines["ro"]

    class Base(sa.orm.DeclarativeBase):
        pass

    class Ref(Base):
        __table__ = ro.ref

    async with engine.connect() as outside:
        for bind_arguments in (
            {"bind_key": "ro"},
            {"bind": engine.sync_engine},
            {"bind": outside.sync_connection},
        ):
            async with ro.db.session() as session:
                for write, what in writes(ro.ref):
                    with pytest.raises(ReadOnlyBindError) as info:
                        await session.execute(write, bind_arguments=bind_arguments)
                    assert_refused(info, what)
                # ORM statements too: a bulk INSERT of a model of the default bind.
                with pytest.raises(ReadOnlyBindError) as info:
                    await session.execute(
                        sa.insert(Ref), [{"id": 7, "name": "orm"}], bind_arguments=bind_arguments
                    )
                assert_refused(info, "an INSERT statement on table 'ref'")
                # The session is still usable.
                found = await session.scalars(
                    sa.select(ro.ref.c.name), bind_arguments=bind_arguments
                )
                assert found.all() == ["one"]
                await session.commit()
    assert [sql.split()[0] for sql in ro.sent_to_ro()] == ["SELECT"] * 3
    assert await ro.names() == ["one"]


async def test_connections_given_to_the_session_are_refused_writes_before_any_sql(
    ro: ReadOnly,
) -> None:
    """A connection of the read-only bind given as ``binds=`` (for the default bind's key, where
    ``ref`` routes, or for the table) or as the session's ``bind=``."""
    # DML: SQLAlchemy matches binds= by table in the statement's elements, which a DDL construct's
    # target is not one of.
    on_ref = [(write, what) for write, what in writes(ro.ref) if write.is_dml]
    async with ro.db.engines["ro"].connect() as conn:
        for given in ({"binds": {None: conn}}, {"binds": {ro.ref: conn}}, {"bind": conn}):
            async with ro.db.session(**given) as session:
                for write, what in on_ref:
                    with pytest.raises(ReadOnlyBindError) as info:
                        await session.execute(write)
                    assert_refused(info, what)
                found = await session.scalars(sa.select(ro.ref.c.name))
                assert found.all() == ["one"]
                assert (await session.connection()).engine is ro.db.engines[
                    "ro"
                ] or "bind" not in given
    assert [sql.split()[0] for sql in ro.sent_to_ro()] == ["SELECT"] * 3
    assert await ro.names() == ["one"]


async def test_a_sessions_connection_refuses_core_writes_before_any_sql(ro: ReadOnly) -> None:
    async with ro.db.session() as session:
        conn = await session.connection(bind_arguments={"bind_key": "ro"})
        assert conn.engine is ro.db.engines["ro"]
        for write, what in writes(ro.ref):
            with pytest.raises(ReadOnlyBindError) as info:
                await conn.execute(write)
            assert_refused(info, what)
        assert (await conn.execute(sa.select(sa.func.count()).select_from(ro.ref))).scalar() == 1
    assert [sql.split()[0] for sql in ro.sent_to_ro()] == ["SELECT"]
    assert await ro.names() == ["one"]


async def test_the_read_only_engine_refuses_core_writes_before_any_sql(ro: ReadOnly) -> None:
    """``engine.connect()``, ``engine.begin()`` and DDL run through ``run_sync``."""
    engine = ro.db.engines["ro"]
    async with engine.connect() as conn:
        for write, what in writes(ro.ref):
            with pytest.raises(ReadOnlyBindError) as info:
                await conn.execute(write)
            assert_refused(info, what)
        # Executemany too.
        with pytest.raises(ReadOnlyBindError, match="an INSERT statement on table 'ref'"):
            await conn.execute(sa.insert(ro.ref), [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}])
        assert (await conn.execute(sa.select(ro.ref.c.name))).scalars().all() == ["one"]
    for write, what in writes(ro.ref):
        with pytest.raises(ReadOnlyBindError) as info:
            async with engine.begin() as conn:
                await conn.execute(write)
        assert_refused(info, what)
    extra = sa.MetaData()
    sa.Table("extra", extra, sa.Column("id", sa.Integer, primary_key=True))
    async with engine.begin() as conn:
        with pytest.raises(ReadOnlyBindError, match="DDL on 'extra'"):
            await conn.run_sync(extra.create_all)
    # Only reads were sent: the SELECT above and create_all()'s check for the table.
    assert ro.sent_to_ro() and ro.writes_sent_to_ro() == []
    async with engine.connect() as conn:
        assert not await conn.run_sync(lambda sync: sa.inspect(sync).has_table("extra"))
    assert await ro.names() == ["one"]


async def test_writable_binds_have_no_read_only_listeners(ro: ReadOnly) -> None:
    """The check runs on read-only engines only; writes elsewhere are sent as they are."""
    assert not ro.db.engines[None].sync_engine.dispatch.before_execute
    assert ro.db.engines["ro"].sync_engine.dispatch.before_execute
    async with ro.db.session() as session:
        await session.execute(
            sa.insert(ro.ref).values(id=3, name="three"), bind_arguments={"bind_key": None}
        )
        await session.commit()
    async with ro.db.engines[None].connect() as conn:
        assert (await conn.execute(sa.select(ro.ref.c.name))).scalars().all() == ["three"]


def assert_driver_refusal(backend: str, error: BaseException | None) -> None:
    """``error`` is the driver's own refusal to write on a read-only connection."""
    if backend == "sqlite":
        assert isinstance(error, sqlite3.OperationalError)
        assert "attempt to write a readonly database" in str(error)
    elif backend == "postgresql":
        import asyncpg

        assert getattr(error, "sqlstate", None) == "25006"
        assert isinstance(error.__cause__, asyncpg.exceptions.ReadOnlySQLTransactionError)
    else:
        import pymysql

        assert isinstance(error, pymysql.err.OperationalError)
        assert error.args[0] == 1792


RAW_WRITES = [
    "INSERT INTO ref (id, name) VALUES (9, 'raw')",
    "UPDATE ref SET name = 'raw'",
    "DELETE FROM ref",
    "CREATE TABLE raw_table (id INTEGER)",
]


async def test_raw_sql_refused_by_the_database_is_a_read_only_error(
    ro: ReadOnly, backend: str
) -> None:
    """text() cannot be recognised as a write; the read-only connection refuses it, and that
    refusal is ReadOnlyBindError with the driver's error as its cause."""
    async with ro.db.session() as session:
        for sql in RAW_WRITES:
            with pytest.raises(ReadOnlyBindError) as info:
                await session.execute(sa.text(sql), bind_arguments={"bind_key": "ro"})
            assert info.value.key == "ro" and info.value.sent is True
            assert "its database refused a write" in str(info.value)
            assert "Roll the transaction back" in str(info.value)
            assert_driver_refusal(backend, info.value.__cause__)
            await session.rollback()
        # Rolled back, the session carries on.
        assert (
            await session.scalars(sa.select(ro.ref.c.name), bind_arguments={"bind_key": "ro"})
        ).all() == ["one"]
    async with ro.db.engines["ro"].connect() as conn:
        for sql in RAW_WRITES:
            with pytest.raises(ReadOnlyBindError) as info:
                await conn.execute(sa.text(sql))
            assert_driver_refusal(backend, info.value.__cause__)
            await conn.rollback()
            with pytest.raises(ReadOnlyBindError) as info:
                await conn.exec_driver_sql(sql)
            assert_driver_refusal(backend, info.value.__cause__)
            await conn.rollback()
    assert await ro.names() == ["one"]


async def test_other_errors_on_a_read_only_bind_keep_their_type(ro: ReadOnly) -> None:
    async with ro.db.engines["ro"].connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as info:
            await conn.execute(sa.text("SELECT * FROM no_such_table"))
        assert not isinstance(info.value, ReadOnlyBindError)


def test_read_only_error_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(ReadOnlyBindError("ro", "a write (x)", sent=True)))
    assert (error.key, error.sent) == ("ro", True)
    assert "its database refused a write (x)" in str(error)


# -- through models and the session ----------------------------------------------------------


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
