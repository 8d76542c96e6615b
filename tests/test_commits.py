"""Commits across binds: a stable order that follows the configuration, and errors that say what
landed. On real servers: PostgreSQL + MariaDB, MariaDB + SQLite, and all three.

A commit is made to fail for real, after the flush: PostgreSQL by a unique constraint checked at
commit (``DEFERRABLE INITIALLY DEFERRED``), SQLite by a deferred foreign key, MariaDB (which has
no deferred constraints) by killing the session's connection from an admin connection.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase, mysql_admin
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncSession

from asyncbind import AsyncBind, BindUnavailableError, PartialCommitError, RoutingSession, stopping
from asyncbind import commits as commits_module
from asyncbind.exceptions import bind_name, format_key

TRIALS = 20
#: The name PostgreSQL's table already holds: inserting it again fails at commit.
TAKEN = "taken"
#: A parent SQLite's table does not hold: referring to it fails at commit.
NO_PARENT = 999


@dataclass
class Bind:
    """One bind of the test: its backend, its table, and how to make its commit fail."""

    key: str
    backend: str
    table: sa.Table

    def row(self, name: str, *, failing: bool = False) -> dict[str, Any]:
        """A row to insert; a failing one breaks a constraint checked at commit (PostgreSQL,
        SQLite) or is sent on a connection that :meth:`break_commit` kills (MariaDB)."""
        if failing and self.backend == "postgresql":
            return {"name": TAKEN}
        if failing and self.backend == "sqlite":
            return {"name": name, "parent_id": NO_PARENT}
        return {"name": name}

    async def break_commit(self, session: AsyncSession) -> None:
        """Make the commit of ``session``'s transaction on this bind fail, after the flush."""
        if self.backend != "mysql":
            return  # the failing row does it
        conn = await session.connection(bind_arguments={"bind_key": self.key})
        thread = (await conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar_one()
        admin = await mysql_admin()
        try:
            async with admin.cursor() as cursor:
                await cursor.execute(f"KILL {int(thread)}")
                for _ in range(200):  # until the server has ended that connection
                    await cursor.execute(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
                        (thread,),
                    )
                    if (await cursor.fetchone())[0] == 0:
                        break
                    await asyncio.sleep(0.05)
        finally:
            admin.close()

    async def names(self, db: AsyncBind) -> list[str]:
        """The names in this bind's table, read on a connection of its own."""
        async with db.engines[self.key].connect() as conn:
            result = await conn.execute(sa.text("SELECT name FROM entries ORDER BY id"))
            return [name for name in result.scalars() if name != TAKEN]


@dataclass
class Setup:
    db: AsyncBind
    binds: list[Bind]  # in the order they commit
    committed_order: list[Any] = field(default_factory=list)

    async def write(self, session: AsyncSession, name: str, failing: Bind | None = None) -> None:
        """A row named ``name`` in every bind's table; ``failing``'s will not commit."""
        for bind in self.binds:
            row = bind.row(name, failing=bind is failing)
            await session.execute(sa.insert(bind.table).values(**row))
        if failing is not None:
            await failing.break_commit(session)

    async def contents(self) -> dict[str, list[str]]:
        return {bind.key: await bind.names(self.db) for bind in self.binds}


def entries_table(db: AsyncBind, key: str, backend: str) -> sa.Table:
    columns: list[Any] = [sa.Column("id", sa.Integer, primary_key=True)]
    if backend == "postgresql":
        name = sa.Column("name", sa.String(50))
        constraint: Any = sa.UniqueConstraint(
            "name", deferrable=True, initially="DEFERRED", name="entries_name"
        )
        return db.Table("entries", *columns, name, constraint, bind_key=key)
    if backend == "sqlite":
        db.Table("parents", sa.Column("id", sa.Integer, primary_key=True), bind_key=key)
        parent = sa.ForeignKey("parents.id", deferrable=True, initially="DEFERRED")
        columns.append(sa.Column("parent_id", sa.Integer, parent, nullable=True))
    return db.Table("entries", *columns, sa.Column("name", sa.String(50)), bind_key=key)


def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


@pytest.fixture
async def make_setup(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> Callable[..., Any]:
    """``await make_setup(["postgresql", "mysql"])``: one bind per backend, named after it and
    configured in that order, each with a table 'entries'."""

    async def make(backends: list[str], **options: Any) -> Setup:
        urls = {backend: await new_database(backend) for backend in backends}
        db = make_db(binds=urls, **options)
        binds = [Bind(key, key, entries_table(db, key, key)) for key in backends]
        for bind in binds:
            if bind.backend == "sqlite":
                sa.event.listen(db.engines[bind.key].sync_engine, "connect", _foreign_keys_on)
        await db.create_all()
        async with db.engines["postgresql"].begin() if "postgresql" in urls else _nothing() as c:
            if c is not None:
                await c.execute(sa.text("INSERT INTO entries (name) VALUES (:n)"), {"n": TAKEN})
        setup = Setup(db, binds)
        for bind in binds:

            def on_commit(_conn: Any, key: str = bind.key) -> None:
                setup.committed_order.append(key)

            sa.event.listen(db.engines[bind.key].sync_engine, "commit", on_commit)
        return setup

    return make


class _nothing:  # noqa: N801
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_: Any) -> None:
        return None


@contextmanager
def nothing_reported(caplog: pytest.LogCaptureFixture) -> Iterator[list[warnings.WarningMessage]]:
    """No warning raised and nothing logged at WARNING or above inside the block."""
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


PAIRS = [
    pytest.param(
        ["postgresql", "mysql"],
        id="postgresql,mysql",
        marks=[pytest.mark.postgresql, pytest.mark.mysql],
    ),
    pytest.param(
        ["mysql", "postgresql"],
        id="mysql,postgresql",
        marks=[pytest.mark.postgresql, pytest.mark.mysql],
    ),
    pytest.param(
        ["mysql", "sqlite"], id="mysql,sqlite", marks=[pytest.mark.mysql, pytest.mark.sqlite]
    ),
    pytest.param(
        ["sqlite", "mysql"], id="sqlite,mysql", marks=[pytest.mark.mysql, pytest.mark.sqlite]
    ),
]


@pytest.mark.parametrize("backends", PAIRS)
async def test_binds_commit_in_the_order_they_were_configured(
    backends: list[str], make_setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    setup = await make_setup(backends)
    with nothing_reported(caplog):
        for trial in range(TRIALS):
            setup.committed_order.clear()
            async with setup.db.session() as session:
                await setup.write(session, f"row{trial}")
                await session.commit()
            assert setup.committed_order == backends, f"trial {trial}"
    assert await setup.contents() == {key: [f"row{i}" for i in range(TRIALS)] for key in backends}


@pytest.mark.parametrize("backends", PAIRS)
async def test_a_failing_second_commit_says_what_landed(
    backends: list[str], make_setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    setup = await make_setup(backends)
    first, second = setup.binds
    async with setup.db.session() as session:
        for trial in range(TRIALS):
            with nothing_reported(caplog), pytest.raises(PartialCommitError) as info:
                await setup.write(session, f"row{trial}", failing=second)
                await session.commit()
            error = info.value
            assert (error.committed, error.failed, error.rolled_back) == (
                (first.key,),
                second.key,
                (),
            ), f"trial {trial}"
            assert error.__cause__ is error.cause
            if second.backend == "mysql":
                # The connection was killed: a connection error, which names the bind.
                assert isinstance(error.cause, BindUnavailableError)
                assert error.cause.bind_key == second.key
            else:
                assert isinstance(error.cause, sa.exc.IntegrityError)
            message = str(error)
            assert f"Committed: {format_key(first.key)}." in message
            assert f"Failed: {format_key(second.key)} ({type(error.cause).__name__}" in message
            assert "Rolled back: none." in message
            # The session was rolled back and can be used at once.
            assert not session.in_transaction()
        await setup.write(session, "after")
        await session.commit()
    assert await setup.contents() == {
        first.key: [f"row{i}" for i in range(TRIALS)] + ["after"],
        second.key: ["after"],
    }


@pytest.mark.parametrize("backends", PAIRS)
async def test_a_failing_first_commit_keeps_its_error_and_commits_nothing(
    backends: list[str], make_setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    setup = await make_setup(backends)
    first, second = setup.binds
    async with setup.db.session() as session:
        with nothing_reported(caplog), pytest.raises(sa.exc.SQLAlchemyError) as info:
            await setup.write(session, "lost", failing=first)
            await session.commit()
        error = info.value
        assert not isinstance(error, PartialCommitError)
        if first.backend == "mysql":
            assert isinstance(error, BindUnavailableError) and error.bind_key == first.key
        else:
            assert isinstance(error, sa.exc.IntegrityError)
        notes = "\n".join(getattr(error, "__notes__", []))
        assert f"{bind_name(first.key)} was the first" in notes
        assert "nothing was committed" in notes and format_key(second.key) in notes
        assert not session.in_transaction()
        await setup.write(session, "after")
        await session.commit()
    assert await setup.contents() == {first.key: ["after"], second.key: ["after"]}


@pytest.mark.sqlite
async def test_an_in_memory_database_whose_rollback_fails_keeps_its_connection(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """The first commit fails and the rollback of the in-memory bind after it fails too: its
    connection is kept, for it is the database, and only the session's row is gone."""
    db = make_db(await new_database("sqlite"), binds={"memory": "sqlite://"})
    main = db.Table("main", sa.Column("id", sa.Integer, primary_key=True))
    kept = db.Table("kept", sa.Column("id", sa.Integer, primary_key=True), bind_key="memory")
    await db.create_all()
    async with db.get_engine("memory").begin() as conn:
        await conn.execute(kept.insert().values(id=1))

    def refuse(_conn: Any) -> None:
        raise RuntimeError("refused")

    sa.event.listen(db.engine.sync_engine, "commit", refuse)
    sa.event.listen(db.get_engine("memory").sync_engine, "rollback", refuse)
    async with db.session() as session:
        await session.execute(main.insert().values(id=1))
        await session.execute(kept.insert().values(id=2))
        with pytest.raises(RuntimeError) as info:
            await session.commit()
    sa.event.remove(db.get_engine("memory").sync_engine, "rollback", refuse)

    async with db.get_engine("memory").connect() as conn:
        assert list(await conn.scalars(sa.select(kept.c.id))) == [1]
    notes = "\n".join(info.value.__notes__)
    assert "rolling back bind 'memory' failed (RuntimeError)" in notes
    assert "its connection was kept, as it is the in-memory database itself" in notes


@pytest.mark.postgresql
@pytest.mark.mysql
@pytest.mark.sqlite
async def test_three_binds_report_committed_failed_and_rolled_back(
    make_setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    setup = await make_setup(["sqlite", "postgresql", "mysql"])
    async with setup.db.session() as session:
        with nothing_reported(caplog), pytest.raises(PartialCommitError) as info:
            await setup.write(session, "one", failing=setup.binds[1])
            await session.commit()
        assert (info.value.committed, info.value.failed, info.value.rolled_back) == (
            ("sqlite",),
            "postgresql",
            ("mysql",),
        )
        assert "Rolled back: 'mysql'." in str(info.value)
    assert await setup.contents() == {"sqlite": ["one"], "postgresql": [], "mysql": []}


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_the_default_bind_commits_first_wherever_it_is_configured(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        binds={"users": await new_database("postgresql"), None: await new_database("mysql")}
    )
    order: list[Any] = []
    for key, engine in db.engines.items():
        sa.event.listen(engine.sync_engine, "commit", lambda _c, key=key: order.append(key))
    tables = {
        key: db.Table("t", sa.Column("id", sa.Integer, primary_key=True), bind_key=key)
        for key in (None, "users")
    }
    await db.create_all()
    for trial in range(TRIALS):
        order.clear()
        async with db.session() as session:
            for table in tables.values():
                await session.execute(sa.insert(table).values(id=trial + 1))
            await session.commit()
        assert order == [None, "users"]


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_a_partial_commit_names_the_default_bind_that_committed(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind], caplog: pytest.LogCaptureFixture
) -> None:
    """The default bind (MariaDB) commits first, then PostgreSQL's commit fails: the message says
    the default bind committed ('Committed: None.' read as nothing having landed)."""
    db = make_db(
        await new_database("mysql"), binds={"postgresql": await new_database("postgresql")}
    )
    landed = entries_table(db, None, "mysql")  # type: ignore[arg-type]
    failing = Bind("postgresql", "postgresql", entries_table(db, "postgresql", "postgresql"))
    await db.create_all()
    async with db.engines["postgresql"].begin() as conn:
        await conn.execute(sa.insert(failing.table).values(name=TAKEN))
    async with db.session() as session:
        with nothing_reported(caplog), pytest.raises(PartialCommitError) as info:
            await session.execute(sa.insert(landed).values(name="kept"))
            await session.execute(
                sa.insert(failing.table).values(failing.row("lost", failing=True))
            )
            await session.commit()
    error = info.value
    assert (error.committed, error.failed, error.rolled_back) == ((None,), "postgresql", ())
    message = str(error)
    assert "Committed: the default bind. Failed: 'postgresql' (IntegrityError" in message
    assert "Committed: None" not in message
    async with db.engines[None].connect() as conn:
        assert (await conn.execute(sa.text("SELECT name FROM entries"))).scalars().all() == ["kept"]
    assert await failing.names(db) == []


@pytest.mark.parametrize("backends", PAIRS[:1] + PAIRS[2:3])
async def test_every_way_of_committing_a_session_is_ordered(
    backends: list[str], make_setup: Callable[..., Any]
) -> None:
    """``session.commit()``, ``async with session.begin():``, the transaction's ``commit()``,
    a SAVEPOINT inside, and ORM objects flushed by the commit itself."""
    setup = await make_setup(backends)
    first, second = setup.binds
    db = setup.db

    class Base(sa_orm.DeclarativeBase):
        pass

    mapped = [
        type(f"Entry{i}", (Base,), {"__table__": bind.table}) for i, bind in enumerate(setup.binds)
    ]

    async def check(name: str, commit: Callable[[AsyncSession], Any]) -> None:
        setup.committed_order.clear()
        async with db.session() as session:
            await commit(session)
        assert setup.committed_order == backends, name

    async def plain(session: AsyncSession) -> None:
        session.add_all(
            [cls(**bind.row("orm")) for cls, bind in zip(mapped, setup.binds, strict=True)]
        )
        await session.commit()  # the flush happens inside the commit

    async def block(session: AsyncSession) -> None:
        async with session.begin():
            await setup.write(session, "block")

    async def explicit(session: AsyncSession) -> None:
        transaction = await session.begin()
        await setup.write(session, "explicit")
        await transaction.commit()

    async def savepoint(session: AsyncSession) -> None:
        async with session.begin():
            async with session.begin_nested():
                await setup.write(session, "savepoint")
            await session.begin_nested()  # left open: the commit releases it
            await setup.write(session, "nested")

    async def savepoint_then_commit(session: AsyncSession) -> None:
        await session.begin_nested()
        await setup.write(session, "released")
        await session.commit()

    for name, commit in [
        ("plain", plain),
        ("block", block),
        ("explicit", explicit),
        ("savepoint", savepoint),
        ("savepoint_then_commit", savepoint_then_commit),
    ]:
        await check(name, commit)
    expected = ["orm", "block", "explicit", "savepoint", "nested", "released"]
    assert await setup.contents() == {first.key: expected, second.key: expected}

    # A failing commit at the end of a block: the same error, the block's session rolled back.
    async with db.session() as session:
        with pytest.raises(PartialCommitError) as info:
            async with session.begin():
                await setup.write(session, "failing1", failing=second)
        assert info.value.committed == (first.key,)
        assert not session.in_transaction()
        transaction = await session.begin()
        await setup.write(session, "failing2", failing=second)
        with pytest.raises(PartialCommitError):
            await transaction.commit()
        assert not session.in_transaction()
    assert await setup.contents() == {
        first.key: [*expected, "failing1", "failing2"],
        second.key: expected,
    }


@pytest.mark.parametrize("backends", PAIRS[:1] + PAIRS[2:3])
async def test_session_events_fire_as_sqlalchemy_fires_them(
    backends: list[str], make_setup: Callable[..., Any]
) -> None:
    setup = await make_setup(backends)
    first, second = setup.binds
    async with setup.db.session() as session:
        fired: list[str] = []
        for event in ("before_commit", "after_commit", "after_rollback", "after_transaction_end"):
            sa.event.listen(
                session.sync_session, event, lambda *_, event=event: fired.append(event)
            )
        await setup.write(session, "good")
        await session.commit()
        assert fired == ["before_commit", "after_commit", "after_transaction_end"]
        fired.clear()
        await setup.write(session, "bad", failing=second)
        with pytest.raises(PartialCommitError):
            await session.commit()
        assert fired == ["before_commit", "after_rollback", "after_transaction_end"]
        fired.clear()
        await setup.write(session, "lost", failing=first)
        with pytest.raises(sa.exc.SQLAlchemyError):
            await session.commit()
        assert fired == ["before_commit", "after_rollback", "after_transaction_end"]


@pytest.mark.mysql
async def test_two_phase_sessions_commit_with_the_log_on_the_first_bind(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """``session_options={"twophase": True}``: every session commits in two phases (see
    test_twophase.py); with no default bind, the decisions go to the first bind configured."""
    db = make_db(
        binds={"a": await new_database("mysql"), "b": await new_database("mysql")},
        session_options={"twophase": True},
    )
    tables = [
        db.Table("t", sa.Column("id", sa.Integer, primary_key=True), bind_key=k) for k in "ab"
    ]
    await db.create_all()
    async with db.session() as session:
        for table in tables:
            await session.execute(sa.insert(table).values(id=1))
        await session.commit()
    for key in "ab":
        async with db.engines[key].connect() as conn:
            assert (await conn.execute(sa.text("SELECT id FROM t"))).scalars().all() == [1]
    async with db.engines["a"].connect() as conn:
        assert (
            await conn.execute(sa.text("SELECT count(*) FROM asyncbind_twophase"))
        ).scalar() == 0


@pytest.mark.sqlite
async def test_one_bind_commits_through_sqlalchemy_alone(
    make_setup: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = await make_setup(["sqlite"])
    taken: list[Any] = []
    real = commits_module.take_prepared
    monkeypatch.setattr(
        commits_module, "take_prepared", lambda root: taken.append(real(root)) or taken[-1]
    )
    async with setup.db.session() as session:
        await setup.write(session, "one")
        await session.commit()
    assert taken == [None]
    assert await setup.contents() == {"sqlite": ["one"]}


@pytest.mark.sqlite
async def test_what_the_ordered_commit_reads_from_sqlalchemy(tmp_path: Any) -> None:
    """The private state the ordered commit and the close rely on (see
    ``commits.take_prepared`` and ``commits.connections_held``): if SQLAlchemy changes it, this
    fails (a connection given to the session, ``autoclose`` False: test_cancellation)."""
    db = AsyncBind(binds={"a": f"sqlite:///{tmp_path}/a.db", "b": f"sqlite:///{tmp_path}/b.db"})
    try:
        async with db.session() as session:

            def check(sync: sa_orm.Session) -> None:
                a = sync.connection(bind_arguments={"bind_key": "a"})
                b = sync.connection(bind_arguments={"bind_key": "b"})
                root = sync.get_transaction()
                assert root is not None
                # Each connection is known by itself and by its engine, as a 4-tuple.
                entries = root._connections
                assert set(entries) == {a, a.engine, b, b.engine}
                for conn in (a, b):
                    entry = entries[conn]
                    assert entries[conn.engine] is entry
                    assert len(entry) == 4
                    assert entry[0] is conn
                    assert entry[1] is conn.get_transaction()
                    assert entry[2] is True and entry[3] is True  # should_commit, autoclose
                assert next(iter(entries.values())) is entries[a]  # in the order acquired
                assert commits_module.connections_held(root) == [(a, True), (b, True)]
                commits_seen: list[Any] = []
                for conn in (a, b):
                    sa.event.listen(conn, "commit", lambda c: commits_seen.append(c))
                fired: list[str] = []
                sa.event.listen(sync, "before_commit", lambda s: fired.append("before_commit"))
                held = commits_module.take_prepared(root)
                assert fired == ["before_commit"]  # _prepare_impl() is the commit's first half
                assert held is not None
                assert [(h.connection, h.transaction, h.close) for h in held] == [
                    (a, a.get_transaction(), True),
                    (b, b.get_transaction(), True),
                ]
                assert root._connections == {}
                root.commit()  # prepared already; nothing of a or b left in it to commit
                assert commits_seen == [] and sync.get_transaction() is None
                for h in held:
                    h.transaction.commit()
                    h.connection.close()
                assert commits_seen == [a, b]

            await session.run_sync(check)
    finally:
        await db.dispose()


@pytest.mark.parametrize("at", [0, 1], ids=["first", "second"])
@pytest.mark.parametrize("backends", PAIRS[:1] + PAIRS[2:3])
async def test_a_commit_cancelled_part_way_leaks_no_connection(
    backends: list[str], at: int, make_setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The task is cancelled while one bind commits: the cancellation comes through as it is,
    with a note of what had landed, and every connection goes back to its pool."""
    setup = await make_setup(backends)
    first, second = setup.binds
    target = setup.binds[at]

    async def commit_and_get_cancelled() -> None:
        async with setup.db.session() as session:
            await setup.write(session, "cancelled")
            task = asyncio.current_task()
            assert task is not None
            sa.event.listen(
                setup.db.engines[target.key].sync_engine,
                "commit",
                lambda _conn: task.cancel(),
                once=True,
            )
            await session.commit()

    with nothing_reported(caplog):
        task = asyncio.create_task(commit_and_get_cancelled())
        async with asyncio.timeout(30):
            with pytest.raises(asyncio.CancelledError) as info:
                await task
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"cancelled while committing {bind_name(target.key)}" in notes
    landed, undone = (
        (format_key(first.key), "none") if at == 1 else ("none", format_key(second.key))
    )
    assert f"Committed: {landed}. Rolled back: {undone}, and the session." in notes
    # MariaDB: the statement cut short is ended on the server over a connection of the bind.
    await stopping.settle(setup.db.engines.values())
    assert all(engine.sync_engine.pool.checkedout() == 0 for engine in setup.db.engines.values())
    contents = await setup.contents()
    if at == 1:
        assert contents[first.key] == ["cancelled"]
    else:
        assert contents[second.key] == []  # rolled back; the first one's fate is the driver's
    async with setup.db.session() as session:
        await setup.write(session, "after")
        await session.commit()
    assert (await setup.contents())[second.key][-1:] == ["after"]


@pytest.mark.sqlite
async def test_an_engine_of_no_bind_commits_last_and_is_named_by_its_url(
    make_setup: Callable[..., Any], tmp_path: Any
) -> None:
    """``bind=`` an engine asyncbind does not know: it commits after the binds, however early
    the session used it, and an error names it by its URL, password hidden."""
    from sqlalchemy.ext.asyncio import create_async_engine

    setup = await make_setup(["sqlite"])
    (bind,) = setup.binds
    foreign = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/foreign.db")
    try:
        order: list[str] = []
        sa.event.listen(foreign.sync_engine, "commit", lambda _c: order.append("foreign"))
        sa.event.listen(foreign.sync_engine, "connect", _foreign_keys_on)
        bind_engine = setup.db.engines["sqlite"].sync_engine
        sa.event.listen(bind_engine, "commit", lambda _c: order.append("sqlite"))
        async with foreign.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE parents (id INTEGER PRIMARY KEY)"))
            await conn.execute(
                sa.text(
                    "CREATE TABLE entries (id INTEGER PRIMARY KEY, name VARCHAR(50), parent_id "
                    "INTEGER REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)"
                )
            )
        order.clear()
        outside = {"bind": foreign.sync_engine}
        async with setup.db.session() as session:
            await session.execute(sa.insert(bind.table).values(name="ok"), bind_arguments=outside)
            await setup.write(session, "mine")
            await session.commit()
            assert order == ["sqlite", "foreign"]
            await session.execute(
                sa.insert(bind.table).values(name="x", parent_id=NO_PARENT), bind_arguments=outside
            )
            await setup.write(session, "landed")
            with pytest.raises(PartialCommitError) as info:
                await session.commit()
        url = foreign.url.render_as_string(hide_password=True)
        assert (info.value.committed, info.value.failed) == (("sqlite",), url)
        assert bind_engine.pool.checkedout() == 0 and foreign.sync_engine.pool.checkedout() == 0
        assert await setup.contents() == {"sqlite": ["mine", "landed"]}
    finally:
        await foreign.dispose()


@pytest.mark.sqlite
async def test_a_sync_session_class_of_ones_own(
    make_db: Callable[..., AsyncBind], tmp_path: Any
) -> None:
    """A RoutingSession subclass of the user's keeps the ordered commit; one with a commit() of its
    own runs it, and its ``super().commit()`` commits in order too."""
    calls: list[str] = []

    class Audited(RoutingSession):
        audited = True

    class OwnCommit(RoutingSession):
        def commit(self) -> None:
            calls.append("commit")
            super().commit()

    for index, session_class in enumerate((Audited, OwnCommit)):
        urls = {key: f"sqlite:///{tmp_path}/{key}{index}.db" for key in ("b", "a")}
        db = make_db(binds=urls, session_options={"sync_session_class": session_class})
        tables = [
            db.Table("t", sa.Column("id", sa.Integer, primary_key=True), bind_key=k) for k in urls
        ]
        await db.create_all()
        order: list[str] = []
        for key, engine in db.engines.items():
            sa.event.listen(
                engine.sync_engine, "commit", lambda _c, key=key, order=order: order.append(key)
            )
        for trial in range(5):
            async with db.session() as session:
                assert isinstance(session.sync_session, session_class)
                for table in tables:
                    await session.execute(sa.insert(table).values(id=trial + 1))
                await session.commit()
        assert order == ["b", "a"] * 5
    assert calls == ["commit"] * 5
