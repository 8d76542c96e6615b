"""Two-phase commit across binds, on a PostgreSQL bind (the default, table ``items``) and a MariaDB
bind (``users``), both real: commits, failures before every bind is prepared, processes killed
with SIGKILL between PREPARE and the last COMMIT, and ``db.recover()``.

Each test names its application uniquely (``twophase_name``), so that it sees only its own
prepared transactions on the shared servers, and rolls back whatever it leaves prepared before
its databases are dropped (a prepared transaction holds its locks and blocks DROP DATABASE).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase, mysql_admin, postgresql_admin, server_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import await_only

import asyncbind
from asyncbind import (
    AsyncBind,
    ConfigError,
    Resolution,
    TwoPhaseInDoubtError,
    TwoPhasePrepareError,
    TwoPhaseTakenOverError,
    TwoPhaseUnsupportedError,
)
from asyncbind.twophase import TABLE_NAME, Left

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]

PACKAGE_ROOT = str(Path(asyncbind.__file__).resolve().parent.parent)
CHILD = str(Path(__file__).resolve().parent / "twophase_child.py")
README_TEXT = (Path(__file__).resolve().parent.parent / "README.md").read_text()
TOO_LONG = "x" * 60  # the columns hold 50: the statement fails on either server


@dataclass
class TwoPhaseBinds:
    db: AsyncBind
    name: str
    postgresql: str
    mysql: str
    items: sa.Table
    users: sa.Table


async def prepared(name: str) -> dict[str, list[str]]:
    """The prepared transactions of application ``name`` on each server, seen by the servers."""
    pg = await postgresql_admin()
    try:
        rows = await pg.fetch(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1 ORDER BY gid", name + ".%"
        )
        on_postgresql = [row["gid"] for row in rows]
    finally:
        await pg.close()
    my = await mysql_admin()
    try:
        async with my.cursor() as cursor:
            await cursor.execute("XA RECOVER")
            found = [row[3] for row in await cursor.fetchall()]
    finally:
        my.close()
    found = [xid.decode() if isinstance(xid, bytes) else xid for xid in found]
    return {
        "postgresql": on_postgresql,
        "mysql": sorted(xid for xid in found if xid.startswith(name + ".")),
    }


async def roll_back_leftovers(name: str) -> None:
    """Roll back, with the raw drivers, every transaction ``name`` left prepared."""
    pg = await postgresql_admin()
    try:
        rows = await pg.fetch(
            "SELECT gid, database FROM pg_prepared_xacts WHERE gid LIKE $1", name + ".%"
        )
    finally:
        await pg.close()
    for row in rows:
        import asyncpg

        url = server_url("postgresql", row["database"])
        conn = await asyncpg.connect(
            host=url.host, port=url.port or 5432, user=url.username, database=row["database"]
        )
        try:
            await conn.execute(f"ROLLBACK PREPARED '{row['gid']}'")
        finally:
            await conn.close()
    my = await mysql_admin()
    try:
        async with my.cursor() as cursor:
            for xid in (await prepared(name))["mysql"]:
                await cursor.execute("XA ROLLBACK %s", (xid,))
    finally:
        my.close()


@pytest.fixture
async def tp(new_database: NewDatabase) -> AsyncIterator[TwoPhaseBinds]:
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    name = f"t{uuid.uuid4().hex[:12]}"
    db = AsyncBind(postgresql, binds={"users": mysql}, twophase_name=name)
    # A unique constraint PostgreSQL checks at PREPARE: the way to make a PREPARE fail.
    items = db.Table(
        "items",
        sa.Column("name", sa.String(50), nullable=False),
        sa.UniqueConstraint("name", deferrable=True, initially="DEFERRED"),
    )
    users = db.Table("users", sa.Column("name", sa.String(50), primary_key=True), bind_key="users")
    await db.create_all()
    try:
        yield TwoPhaseBinds(db, name, postgresql, mysql, items, users)
    finally:
        await db.dispose()
        await roll_back_leftovers(name)


async def names(tp: TwoPhaseBinds) -> tuple[list[str], list[str]]:
    """The names in ``items`` and in ``users``, read on connections of their own."""
    async with tp.db.engine.connect() as conn:
        items = list(await conn.scalars(sa.select(tp.items.c.name).order_by("name")))
    async with tp.db.engines["users"].connect() as conn:
        users = list(await conn.scalars(sa.select(tp.users.c.name).order_by("name")))
    return items, users


async def decisions(tp: TwoPhaseBinds) -> list[tuple[str, str]]:
    async with tp.db.engine.connect() as conn:
        if not await conn.run_sync(lambda c: sa.inspect(c).has_table(TABLE_NAME)):
            return []
        rows = await conn.execute(sa.text(f"SELECT xid, outcome FROM {TABLE_NAME} ORDER BY xid"))
        return [(row.xid, row.outcome) for row in rows]


NOTHING = {"postgresql": [], "mysql": []}


# -- commits ----------------------------------------------------------------------------------


async def test_a_commit_lands_on_both_binds_and_fires_the_two_phase_events(
    tp: TwoPhaseBinds,
) -> None:
    events: list[tuple[str, Any, str]] = []
    for key, engine in tp.db.engines.items():
        for name in ("begin_twophase", "prepare_twophase", "commit_twophase"):

            def listener(conn: Any, xid: Any, *args: Any, _key: Any = key, _name: str = name):
                events.append((_name, _key, xid))

            sa.event.listen(engine.sync_engine, name, listener)
    async with tp.db.session(twophase=True) as session:
        await session.execute(sa.insert(tp.users).values(name="ada"))
        await session.execute(sa.insert(tp.items).values(name="ada"))
        await session.commit()
    assert await names(tp) == (["ada"], ["ada"])
    assert [event[0] for event in events] == [
        "begin_twophase",
        "begin_twophase",
        "prepare_twophase",
        "prepare_twophase",
        "commit_twophase",
        "commit_twophase",
    ]
    # The default bind commits first, as in one-phase commits; the ids name the application.
    assert [event[1] for event in events[4:]] == [None, "users"]
    xids = {event[2] for event in events}
    assert len(xids) == 2
    assert all(xid.startswith(tp.name + ".") for xid in xids)
    # The decision was recorded, then deleted once both binds committed.
    assert await decisions(tp) == []
    assert await prepared(tp.name) == NOTHING


async def test_prepare_of_its_own_is_refused_and_commit_still_works(tp: TwoPhaseBinds) -> None:
    """A prepare() of the caller's would skip the decision record recovery goes by."""
    async with tp.db.session(twophase=True) as session:
        await session.execute(sa.insert(tp.users).values(name="ada"))
        await session.execute(sa.insert(tp.items).values(name="ada"))
        with pytest.raises(TwoPhasePrepareError, match="Call commit"):
            await session.run_sync(lambda sync: sync.prepare())
        assert await prepared(tp.name) == NOTHING
        assert session.in_transaction()
        await session.commit()
    assert await names(tp) == (["ada"], ["ada"])
    assert await prepared(tp.name) == NOTHING
    # A session without twophase=True gets SQLAlchemy's own answer.
    async with tp.db.session() as session:
        await session.execute(sa.insert(tp.items).values(name="bob"))
        with pytest.raises(sa_exc.InvalidRequestError, match="'twophase' mode not enabled") as e:
            await session.run_sync(lambda sync: sync.prepare())
        assert not isinstance(e.value, TwoPhasePrepareError)


async def test_scopes_and_begin_blocks_commit_in_two_phases(tp: TwoPhaseBinds) -> None:
    prepares: list[Any] = []
    for engine in tp.db.engines.values():
        sa.event.listen(engine.sync_engine, "prepare_twophase", lambda c, x: prepares.append(x))
    async with tp.db.scope(twophase=True):
        assert tp.db.session.sync_session.twophase
        await tp.db.session.execute(sa.insert(tp.items).values(name="scope"))
        await tp.db.session.execute(sa.insert(tp.users).values(name="scope"))
        await tp.db.session.commit()
    async with tp.db.session(twophase=True) as session, session.begin():
        await session.execute(sa.insert(tp.items).values(name="block"))
        await session.execute(sa.insert(tp.users).values(name="block"))
    assert await names(tp) == (["block", "scope"], ["block", "scope"])
    assert len(prepares) == 4
    assert await decisions(tp) == []


async def test_a_session_on_one_bind_commits_in_two_phases_without_a_decision(
    tp: TwoPhaseBinds, statements: Any
) -> None:
    log = statements(tp.db)
    async with tp.db.session(twophase=True) as session:
        await session.execute(sa.insert(tp.users).values(name="one"))
        await session.commit()
    assert await names(tp) == ([], ["one"])
    sent = [sql for _, sql in log]
    assert any(sql.startswith("XA PREPARE") for sql in sent)
    assert not any(TABLE_NAME in sql for sql in sent)


async def kill_connection(backend: str, connection_id: int) -> None:
    """End a connection from the server's side, as a lost connection does."""
    if backend == "postgresql":
        pg = await postgresql_admin()
        try:
            await pg.execute("SELECT pg_terminate_backend($1)", connection_id)
        finally:
            await pg.close()
    else:
        my = await mysql_admin()
        try:
            async with my.cursor() as cursor:
                await cursor.execute(f"KILL {connection_id}")
        finally:
            my.close()


def killed_before_commit(backend: str, connection_id: list[int]) -> Callable[..., None]:
    """A ``commit_twophase`` listener that ends the server connection ``connection_id[0]`` (of
    ``backend``, set once the session has it) just before the COMMIT is sent."""

    def kill(conn: Any, xid: Any, is_prepared: bool) -> None:
        await_only(kill_connection(backend, connection_id[0]))

    return kill


ONE_BIND = pytest.mark.parametrize("key", [None, "users"], ids=["postgresql", "mysql"])


@ONE_BIND
async def test_one_bind_cancelled_before_its_commit_is_sent_is_rolled_back(
    tp: TwoPhaseBinds, key: str | None
) -> None:
    """Cancelled after PREPARE, before COMMIT PREPARED / XA COMMIT is sent: the prepared
    transaction is rolled back at once rather than left holding its locks."""
    table = tp.users if key else tp.items
    engine = tp.db.engines[key].sync_engine

    def wait_before_commit(conn: Any, xid: Any, is_prepared: bool) -> None:
        await_only(asyncio.sleep(30))

    sa.event.listen(engine, "commit_twophase", wait_before_commit)
    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.5):
            async with tp.db.session(twophase=True) as session:
                await session.execute(sa.insert(table).values(name="a"))
                await session.commit()
    sa.event.remove(engine, "commit_twophase", wait_before_commit)
    cancelled = caught.value.__context__
    assert cancelled is not None
    assert any(
        "failed before it was committed, so its prepared transaction was rolled back" in note
        for note in cancelled.__notes__
    )
    assert await prepared(tp.name) == NOTHING
    assert await names(tp) == ([], [])
    assert await tp.db.recover() == []


@ONE_BIND
async def test_one_bind_lost_before_its_commit_is_in_doubt_and_recovered(
    tp: TwoPhaseBinds, key: str | None
) -> None:
    """The connection is lost just before COMMIT PREPARED / XA COMMIT: TwoPhaseInDoubtError says
    so, and recover() rolls the prepared transaction back (no decision is recorded for one
    bind)."""
    backend = "mysql" if key else "postgresql"
    table = tp.users if key else tp.items
    engine = tp.db.engines[key].sync_engine
    connection_id: list[int] = []
    kill_before_commit = killed_before_commit(backend, connection_id)

    sa.event.listen(engine, "commit_twophase", kill_before_commit)
    async with tp.db.session(twophase=True) as session:
        own_id = "SELECT CONNECTION_ID()" if key else "SELECT pg_backend_pid()"
        conn = await session.connection(bind_arguments={"bind_key": key})
        connection_id.append((await conn.exec_driver_sql(own_id)).scalar_one())
        await session.execute(sa.insert(table).values(name="a"))
        with pytest.raises(TwoPhaseInDoubtError) as caught:
            await session.commit()
        error = caught.value
        assert (error.decided, error.committed, error.in_doubt) == (False, (), (key,))
        assert "the session's only bind, landed is unknown" in str(error)
        assert "'await db.recover()'" in str(error)
    sa.event.remove(engine, "commit_twophase", kill_before_commit)
    in_doubt = await prepared(tp.name)
    assert len(in_doubt[backend]) == 1
    assert await tp.db.recover() == [Resolution(key, in_doubt[backend][0], False)]
    assert await prepared(tp.name) == NOTHING
    assert await names(tp) == ([], [])


# -- failures before every bind is prepared ----------------------------------------------------


@pytest.mark.parametrize(
    ("failing", "when"),
    [
        ("postgresql", "statement"),
        ("mysql", "statement"),
        ("postgresql", "prepare"),
        ("mysql", "prepare"),
    ],
)
async def test_a_failure_before_every_bind_is_prepared_leaves_nothing_in_either(
    tp: TwoPhaseBinds, failing: str, when: str
) -> None:
    failing_table, other_table = (tp.items, tp.users)
    if failing == "mysql":
        failing_table, other_table = tp.users, tp.items
    if when == "prepare" and failing == "postgresql":
        async with tp.db.engine.begin() as conn:
            await conn.execute(sa.insert(tp.items).values(name="taken"))
    async with tp.db.session(twophase=True) as session:
        await session.execute(sa.insert(other_table).values(name="other"))
        if when == "statement":
            with pytest.raises(sa_exc.DBAPIError):
                await session.execute(sa.insert(failing_table).values(name=TOO_LONG))
            await session.rollback()
        else:
            await session.execute(sa.insert(failing_table).values(name="taken"))
            if failing == "mysql":  # end its connection on the server: XA END / PREPARE fail
                conn = await session.connection(bind_arguments={"bind_key": "users"})
                thread = (await conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar_one()
                admin = await mysql_admin()
                try:
                    async with admin.cursor() as cursor:
                        await cursor.execute(f"KILL {int(thread)}")
                finally:
                    admin.close()
            with pytest.raises(sa_exc.DBAPIError):  # the unique constraint, or the lost link
                await session.commit()
        # The session is usable again.
        await session.execute(sa.insert(other_table).values(name="again"))
        await session.commit()
    items, users = await names(tp)
    expected_items = ["taken"] if when == "prepare" and failing == "postgresql" else []
    assert items == sorted([*expected_items, *(["again"] if other_table is tp.items else [])])
    assert users == (["again"] if other_table is tp.users else [])
    assert await prepared(tp.name) == NOTHING
    assert await decisions(tp) == []


# -- SQLite ------------------------------------------------------------------------------------


async def test_a_sqlite_bind_is_refused_before_anything_is_sent(
    new_database: NewDatabase, statements: Any
) -> None:
    postgresql, sqlite = await new_database("postgresql"), await new_database("sqlite")
    db = AsyncBind(postgresql, binds={"cache": sqlite}, twophase_name="refusal")
    hits = db.Table("hits", sa.Column("id", sa.Integer, primary_key=True), bind_key="cache")
    items = db.Table("items", sa.Column("id", sa.Integer, primary_key=True))
    try:
        await db.create_all()
        log = statements(db)
        async with db.session(twophase=True) as session:
            await session.execute(sa.insert(items).values(id=1))
            for statement in (sa.insert(hits).values(id=1), sa.select(hits)):
                with pytest.raises(TwoPhaseUnsupportedError) as caught:
                    await session.execute(statement)
                assert caught.value.bind_key == "cache"
                assert caught.value.dialect == "sqlite"
                message = str(caught.value)
                assert "Bind 'cache' (sqlite) cannot take part in a two-phase session" in message
                assert "Nothing was sent to it" in message
                assert "without twophase=True" in message
            await session.commit()  # the PostgreSQL part is unharmed
        assert [key for key, _ in log if key == "cache"] == []
        async with db.session() as session:  # one-phase sessions use it as usual
            await session.execute(sa.insert(hits).values(id=1))
            await session.commit()
            assert await session.scalar(sa.select(sa.func.count()).select_from(items)) == 1
    finally:
        await db.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_a_tenant_database_is_refused_before_anything_is_sent(
    tp: TwoPhaseBinds, new_database: NewDatabase, backend: str
) -> None:
    """recover() looks at the configured binds only: a tenant's prepared transaction would stay
    in doubt for good, so a two-phase session refuses a tenant group's engine."""
    tenant_url = await new_database(backend)
    tp.db.add_group("tenant", url=lambda tenant: tenant_url)
    notes = tp.db.Table("notes", sa.Column("id", sa.Integer, primary_key=True), bind_key="tenant")
    with tp.db.route(tenant="t1"):
        await tp.db.create_all(bind_key="tenant")
        engine = tp.db.get_engine("tenant", tenant="t1").sync_engine
        sent: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
        sa.event.listen(engine, "begin_twophase", lambda conn, xid: sent.append("begin"))
        async with tp.db.session(twophase=True) as session:
            await session.execute(sa.insert(tp.users).values(name="a"))
            for statement in (sa.insert(notes).values(id=1), sa.select(notes)):
                with pytest.raises(TwoPhaseUnsupportedError) as caught:
                    await session.execute(statement)
                error = caught.value
                assert (error.bind_key, error.tenant) == ("tenant", "t1")
                message = str(error)
                assert "Tenant 't1' of group 'tenant'" in message
                assert "db.recover() finds in-doubt transactions on the configured binds" in message
                assert "Nothing was sent to it" in message
                assert "without twophase=True" in message
            await session.commit()  # the configured bind's part is unharmed
        assert sent == []
        async with tp.db.session() as session:  # one-phase sessions use it as usual
            await session.execute(sa.insert(notes).values(id=1))
            await session.commit()
    assert await names(tp) == ([], ["a"])
    assert await prepared(tp.name) == NOTHING


def test_the_application_name_is_checked() -> None:
    for bad in ("", "has space", "a" * 31, "dot.ted", 7):
        with pytest.raises(ConfigError, match="twophase_name=") as caught:
            AsyncBind("sqlite://", twophase_name=bad)  # type: ignore[arg-type]
        assert "Example: twophase_name='shop'" in str(caught.value)


# -- crashes and recovery ----------------------------------------------------------------------


class Child:
    """``twophase_child.py`` stopped at ``step`` of its commit."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        #: The transaction id each bind prepared, by bind key, as the child says.
        self.xids: dict[str | None, str] = {}

    @classmethod
    async def start(cls, tp: TwoPhaseBinds, step: str, row: str, *more: str) -> Child:
        """The child for ``tp``'s binds, and bind ``more`` on the database ``more`` names."""
        env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            CHILD,
            tp.postgresql,
            tp.mysql,
            tp.name,
            step,
            row,
            *more,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        child = cls(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        while line.startswith(b"XID "):
            _, key, xid = line.decode().split()
            child.xids[None if key == "None" else key] = xid
            line = await asyncio.wait_for(process.stdout.readline(), 120)
        if line.strip() != b"PAUSED":
            assert process.stderr is not None
            err = await asyncio.wait_for(process.stderr.read(), 120)
            raise AssertionError(f"the child did not pause: {line!r} {err.decode()[-2000:]}")
        return child

    async def kill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup of any kind
        await asyncio.wait_for(self.process.wait(), 60)
        assert self.process.returncode == -signal.SIGKILL

    async def go_on(self) -> str:
        """Let it finish; what it printed last."""
        out, err = await asyncio.wait_for(self.process.communicate(b"\n"), 120)
        assert self.process.returncode == 0, err.decode()[-2000:]
        return out.decode().strip()


STEPS = {
    # step: (in doubt on postgresql, on mysql, what recovery does)
    "prepared": (1, 1, False),
    "decided": (1, 1, True),
    "committed-one": (0, 1, True),
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_a_process_killed_between_prepare_and_commit_is_recovered(
    tp: TwoPhaseBinds, step: str
) -> None:
    on_postgresql, on_mysql, commits = STEPS[step]
    async with tp.db.session(twophase=True) as session:  # a commit before, which stays
        await session.execute(sa.insert(tp.items).values(name="before"))
        await session.execute(sa.insert(tp.users).values(name="before"))
        await session.commit()

    child = await Child.start(tp, step, "crash")
    await child.kill()
    in_doubt = await prepared(tp.name)
    assert [len(in_doubt["postgresql"]), len(in_doubt["mysql"])] == [on_postgresql, on_mysql]
    if step == "committed-one":
        assert await names(tp) == (["before", "crash"], ["before"])
    else:
        assert await names(tp) == (["before"], ["before"])

    done = await tp.db.recover()
    expected = [Resolution(None, xid, commits) for xid in in_doubt["postgresql"]]
    expected += [Resolution("users", xid, commits) for xid in in_doubt["mysql"]]
    assert done == expected
    assert str(done[-1]) == f"bind 'users': {'committed' if commits else 'rolled back'} " + str(
        in_doubt["mysql"][0]
    )
    rows = ["before", "crash"] if commits else ["before"]
    assert await names(tp) == (rows, rows)  # no row lost, none half-applied
    assert await prepared(tp.name) == NOTHING
    # Idempotent: nothing left to do, and the commit's decision rows are gone. A rollback
    # claim stays for a while, to stop a coordinator that records its decision late.
    assert await tp.db.recover() == []
    assert await names(tp) == (rows, rows)
    left = await decisions(tp)
    if commits:
        assert left == []
    else:
        claims = in_doubt["postgresql"] + in_doubt["mysql"]
        assert left == sorted((xid, "rollback") for xid in claims)


async def test_binds_sharing_a_mariadb_server_each_resolve_their_own(
    tp: TwoPhaseBinds, new_database: NewDatabase
) -> None:
    """MariaDB lists every prepared transaction of the server to each bind on it: each is still
    resolved once, and its Resolution names the bind that prepared it."""
    more = await new_database("mysql")
    engine = create_async_engine(sa.make_url(more).set(drivername="mysql+aiomysql"))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE members (name VARCHAR(50) PRIMARY KEY)"))
        child = await Child.start(tp, "decided", "crash", more)
        await child.kill()
        assert set(child.xids) == {None, "users", "more"}
        assert (await prepared(tp.name))["mysql"] == sorted(
            [child.xids["users"], child.xids["more"]]
        )
        db = AsyncBind(
            tp.postgresql, binds={"users": tp.mysql, "more": more}, twophase_name=tp.name
        )
        try:
            done = await db.recover()
            assert await db.recover() == []
        finally:
            await db.dispose()
        assert done == [Resolution(key, child.xids[key], True) for key in (None, "users", "more")]
        async with engine.connect() as conn:
            assert list((await conn.execute(sa.text("SELECT name FROM members"))).scalars()) == [
                "crash"
            ]
        assert await names(tp) == (["crash"], ["crash"])
        assert await prepared(tp.name) == NOTHING

        # An id whose digits carry no tag of this deployment's (made before ids named their
        # deployment, by a bind since renamed) is left alone while this deployment's log has no
        # decision for it, as another deployment's would be; with one, it goes to the first bind
        # that lists it.
        legacy = f"{tp.name}.{'0' * 32}"
        my = await mysql_admin()
        try:
            async with my.cursor() as cursor:
                await cursor.execute(f"USE `{sa.make_url(more).database}`")
                await cursor.execute(f"XA START '{legacy}'")
                await cursor.execute("INSERT INTO members VALUES ('legacy')")
                await cursor.execute(f"XA END '{legacy}'")
                await cursor.execute(f"XA PREPARE '{legacy}'")
        finally:
            my.close()
        db = AsyncBind(
            tp.postgresql, binds={"users": tp.mysql, "more": more}, twophase_name=tp.name
        )
        try:
            assert await db.recover() == []
            assert (await prepared(tp.name))["mysql"] == [legacy]
            async with db.engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        f"INSERT INTO {TABLE_NAME} (xid, outcome, decided_at) "
                        "VALUES (:xid, 'commit', now())"
                    ),
                    {"xid": legacy},
                )
            assert await db.recover() == [Resolution("users", legacy, True)]
        finally:
            await db.dispose()
        assert await prepared(tp.name) == NOTHING
        assert await decisions(tp) == []
    finally:
        await engine.dispose()


async def test_deployments_sharing_the_servers_leave_each_other_alone(
    tp: TwoPhaseBinds, new_database: NewDatabase
) -> None:
    """Two deployments of one application (same twophase_name), each with databases of its own
    on the same servers: one's recover() leaves the other's decided transaction alone, which
    the other's own recover() then commits."""
    thread: list[int] = []
    kill_before_commit = killed_before_commit("mysql", thread)

    sa.event.listen(tp.db.engines["users"].sync_engine, "commit_twophase", kill_before_commit)
    async with tp.db.session(twophase=True) as session:
        await session.execute(sa.insert(tp.items).values(name="a"))
        conn = await session.connection(bind_arguments={"bind_key": "users"})
        thread.append((await conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar_one())
        await session.execute(sa.insert(tp.users).values(name="a"))
        with pytest.raises(TwoPhaseInDoubtError):
            await session.commit()
    sa.event.remove(tp.db.engines["users"].sync_engine, "commit_twophase", kill_before_commit)
    in_doubt = (await prepared(tp.name))["mysql"]
    assert len(in_doubt) == 1

    other = AsyncBind(
        await new_database("postgresql"),
        binds={"users": await new_database("mysql")},
        twophase_name=tp.name,
    )
    try:
        assert await other.recover() == []
    finally:
        await other.dispose()
    assert (await prepared(tp.name))["mysql"] == in_doubt
    assert await tp.db.recover() == [Resolution("users", in_doubt[0], True)]
    assert await names(tp) == (["a"], ["a"])


async def test_recovery_while_a_commit_is_prepared_makes_it_roll_back_everywhere(
    tp: TwoPhaseBinds,
) -> None:
    """Recovery claims an undecided transaction before rolling it back: the coordinator, still
    alive, then fails to record its decision, and rolls back too.

    MariaDB lets only the live connection that prepared a transaction end it, so recovery rolls
    back the PostgreSQL part and leaves the MariaDB part to its coordinator."""
    child = await Child.start(tp, "prepared", "race")
    done = await tp.db.recover()
    assert [(r.bind_key, r.committed) for r in done] == [(None, False)]
    assert done.left == [Left("users", child.xids["users"], False)]
    assert await child.go_on() == f"FAILED {TwoPhaseTakenOverError.__name__}"
    assert await names(tp) == ([], [])
    assert await prepared(tp.name) == NOTHING
    assert await tp.db.recover() == []


async def test_recovery_after_the_decision_commits_what_the_coordinator_had_not(
    tp: TwoPhaseBinds,
) -> None:
    child = await Child.start(tp, "decided", "race")
    in_doubt = await prepared(tp.name)
    done = await tp.db.recover()
    # The MariaDB part is still held by its live coordinator: left for later.
    assert done == [Resolution(None, in_doubt["postgresql"][0], True)]
    # The coordinator finds its PostgreSQL part committed by someone else: it says the commit
    # stands and leaves the rest prepared for recover().
    assert await child.go_on() == f"FAILED {TwoPhaseInDoubtError.__name__}"
    assert await tp.db.recover() == [Resolution("users", in_doubt["mysql"][0], True)]
    assert await names(tp) == (["race"], ["race"])
    assert await prepared(tp.name) == NOTHING
    assert await decisions(tp) == []


async def test_recovery_leaves_other_applications_alone(tp: TwoPhaseBinds) -> None:
    other = AsyncBind(tp.postgresql, binds={"users": tp.mysql}, twophase_name=tp.name + "x")
    try:
        child = await Child.start(tp, "decided", "mine")
        await child.kill()
        assert await other.recover() == []
        assert len((await prepared(tp.name))["mysql"]) == 1
        assert len(await tp.db.recover()) == 2
    finally:
        await other.dispose()


async def test_recover_with_nothing_in_doubt_does_nothing(tp: TwoPhaseBinds) -> None:
    assert await tp.db.recover() == []
    async with tp.db.engine.connect() as conn:  # not even make the decision table
        assert not await conn.run_sync(lambda c: sa.inspect(c).has_table(TABLE_NAME))


async def test_a_decision_whose_commit_fails_is_settled_by_recover(tp: TwoPhaseBinds) -> None:
    """The log bind's COMMIT of the decision fails: whether it landed is unknown, so both binds
    stay prepared (TwoPhaseInDoubtError, decided None), and recover() settles them the same way:
    here the decision had not landed, so both are rolled back."""

    def fail(conn: Any) -> None:
        if str(conn.info.get("sent", "")).startswith(f"INSERT INTO {TABLE_NAME}"):
            raise ConnectionResetError("the log bind went away during COMMIT")

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info["sent"] = statement

    log = tp.db.engine.sync_engine
    sa.event.listen(log, "before_cursor_execute", note)
    sa.event.listen(log, "commit", fail)
    try:
        async with tp.db.session(twophase=True) as session:
            await session.execute(sa.insert(tp.items).values(name="a"))
            await session.execute(sa.insert(tp.users).values(name="a"))
            with pytest.raises(TwoPhaseInDoubtError) as caught:
                await session.commit()
    finally:
        sa.event.remove(log, "commit", fail)
        sa.event.remove(log, "before_cursor_execute", note)
    error = caught.value
    assert (error.decided, error.committed, error.in_doubt) == (None, (), (None, "users"))
    assert "Whether the decision to commit was recorded is unknown" in str(error)
    assert isinstance(error.__cause__, ConnectionResetError)
    in_doubt = await prepared(tp.name)
    assert [len(in_doubt["postgresql"]), len(in_doubt["mysql"])] == [1, 1]
    done = await tp.db.recover()
    assert [(r.bind_key, r.committed) for r in done] == [(None, False), ("users", False)]
    assert await names(tp) == ([], [])


async def test_the_decision_log_may_live_on_another_bind(
    new_database: NewDatabase,
) -> None:
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    db = AsyncBind(postgresql, binds={"users": mysql}, twophase_name="logged", twophase_log="users")
    items = db.Table("items", sa.Column("name", sa.String(50), primary_key=True))
    users = db.Table("users", sa.Column("name", sa.String(50), primary_key=True), bind_key="users")
    try:
        await db.create_all()
        async with db.session(twophase=True) as session:
            await session.execute(sa.insert(items).values(name="a"))
            await session.execute(sa.insert(users).values(name="a"))
            await session.commit()
        async with db.engines["users"].connect() as conn:
            assert TABLE_NAME in await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        async with db.engine.connect() as conn:
            assert TABLE_NAME not in await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    finally:
        await db.dispose()


# -- the command line --------------------------------------------------------------------------


async def test_asyncbind_db_recover(tp: TwoPhaseBinds, tmp_path: Path) -> None:
    (tmp_path / "crashapp.py").write_text(
        textwrap.dedent(
            f"""
            from asyncbind import AsyncBind
            db = AsyncBind({tp.postgresql!r}, binds={{"users": {tp.mysql!r}}},
                           twophase_name={tp.name!r})
            """
        )
    )
    child = await Child.start(tp, "decided", "cli")
    await child.kill()
    in_doubt = await prepared(tp.name)

    async def cli() -> list[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCBIND_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncbind",
            "--app",
            "crashapp",
            "db",
            "recover",
            cwd=tmp_path,
            env={**environ, "PYTHONPATH": PACKAGE_ROOT},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()
        return out.decode().splitlines()

    assert await cli() == [
        f"the default bind: committed {in_doubt['postgresql'][0]}",
        f"bind 'users': committed {in_doubt['mysql'][0]}",
    ]
    assert await names(tp) == (["cli"], ["cli"])
    assert await cli() == ["no two-phase transaction in doubt"]


async def test_asyncbind_db_recover_from_the_environment_takes_the_apps_name(
    tp: TwoPhaseBinds, tmp_path: Path
) -> None:
    """Without --app, the binds come from ASYNCBIND_* variables: --twophase-name, or
    ASYNCBIND_TWOPHASE_NAME, names the app's transactions."""

    async def cli(*options: str, **variables: str) -> tuple[int, list[str], str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCBIND_")}
        environ.update(
            ASYNCBIND_DATABASE_URL=tp.postgresql, ASYNCBIND_BIND_USERS=tp.mysql, **variables
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncbind",
            "db",
            "recover",
            *options,
            cwd=tmp_path,
            env={**environ, "PYTHONPATH": PACKAGE_ROOT},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode is not None
        return process.returncode, out.decode().splitlines(), err.decode()

    for step, options, variables in [
        ("flag", ["--twophase-name", tp.name], {}),
        ("env", [], {"ASYNCBIND_TWOPHASE_NAME": tp.name}),
    ]:
        child = await Child.start(tp, "decided", step)
        await child.kill()
        in_doubt = await prepared(tp.name)
        assert await cli() == (0, ["no two-phase transaction in doubt"], "")  # 'asyncbind' ids
        assert await cli(*options, **variables) == (
            0,
            [
                f"the default bind: committed {in_doubt['postgresql'][0]}",
                f"bind 'users': committed {in_doubt['mysql'][0]}",
            ],
            "",
        )
    assert await names(tp) == (["env", "flag"], ["env", "flag"])
    status, _, err = await cli("--app", "crashapp", "--twophase-name", tp.name)
    assert status == 2
    assert "--twophase-name configures an AsyncBind made from the ASYNCBIND_*" in err


async def test_asyncbind_db_recover_says_what_it_had_to_leave(
    tp: TwoPhaseBinds, tmp_path: Path
) -> None:
    """A transaction MariaDB still holds for the live process that prepared it cannot be
    finished: the command says so on stderr and exits 1, and recover() lists it in ``left``."""
    (tmp_path / "busyapp.py").write_text(
        textwrap.dedent(
            f"""
            from asyncbind import AsyncBind
            db = AsyncBind({tp.postgresql!r}, binds={{"users": {tp.mysql!r}}},
                           twophase_name={tp.name!r})
            """
        )
    )
    child = await Child.start(tp, "decided", "busy")
    try:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCBIND_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncbind",
            "--app",
            "busyapp",
            "db",
            "recover",
            cwd=tmp_path,
            env={**environ, "PYTHONPATH": PACKAGE_ROOT},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 1
        assert out.decode().splitlines() == [f"the default bind: committed {child.xids[None]}"]
        message = err.decode()
        assert f"bind 'users': left {child.xids['users']} prepared" in message
        assert "run recover() again once that connection has ended, to commit it" in message
        assert "no two-phase transaction in doubt" not in out.decode()
        done = await tp.db.recover()
        assert done == []
        assert done.left == [Left("users", child.xids["users"], True)]
    finally:
        await child.kill()
    assert await tp.db.recover() == [Resolution("users", child.xids["users"], True)]
    assert await names(tp) == (["busy"], ["busy"])


# -- what the recovery relies on in SQLAlchemy -------------------------------------------------


async def test_sqlalchemy_still_ends_prepared_transactions_the_way_recovery_expects(
    tp: TwoPhaseBinds,
) -> None:
    """Recovery finishes a transaction with ``Connection.commit_prepared(xid, recover=True)``:
    on asyncpg that works only in SQLAlchemy's default (non-autocommit) mode, through the
    dialect's ROLLBACK / COMMIT PREPARED / BEGIN and the adapter's own ROLLBACK; on aiomysql
    only in AUTOCOMMIT. If SQLAlchemy changes either, this fails, and so would recovery."""
    child = await Child.start(tp, "decided", "relied")
    await child.kill()
    in_doubt = await prepared(tp.name)
    engine = create_async_engine(sa.make_url(tp.postgresql).set(drivername="postgresql+asyncpg"))
    try:
        async with engine.connect() as conn:
            sent: list[str] = []
            sa.event.listen(
                conn.sync_connection, "before_cursor_execute", lambda *a: sent.append(a[2])
            )
            await conn.run_sync(
                lambda c: c.commit_prepared(in_doubt["postgresql"][0], recover=True)
            )
            assert sent[0] == "ROLLBACK" and sent[1].startswith("COMMIT PREPARED")
            assert await conn.scalar(sa.text("SELECT 1")) == 1  # still usable
    finally:
        await engine.dispose()
    engine = create_async_engine(sa.make_url(tp.mysql).set(drivername="mysql+aiomysql"))
    try:
        async with engine.connect() as conn:
            with pytest.raises(sa_exc.OperationalError, match="XAER_OUTSIDE"):
                await conn.run_sync(lambda c: c.recover_twophase())
                await conn.run_sync(lambda c: c.commit_prepared(in_doubt["mysql"][0]))
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.run_sync(lambda c: c.commit_prepared(in_doubt["mysql"][0], recover=True))
    finally:
        await engine.dispose()
    assert await prepared(tp.name) == NOTHING
    assert await names(tp) == (["relied"], ["relied"])


def test_autogenerate_leaves_the_decision_table_alone() -> None:
    pytest.importorskip("alembic")
    from asyncbind.migrations import _only_this_bind

    db = AsyncBind("sqlite://", binds={"users": "sqlite://"})
    db.Table("items", sa.Column("id", sa.Integer, primary_key=True))
    for key in (None, "users"):
        include = _only_this_bind(db, key)
        assert include(TABLE_NAME, "table", {}) is False
        assert include("unknown_table", "table", {}) is True


async def test_the_readme_example_runs(new_database: NewDatabase, tmp_path: Path) -> None:
    section = README_TEXT[README_TEXT.index("### Two-phase commit") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    code = code.replace("postgresql://postgres@127.0.0.1/shop", postgresql)
    code = code.replace("mysql://root@127.0.0.1/users", mysql)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        code,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PACKAGE_ROOT},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert out.decode().split() == ["1"]


async def test_a_decision_that_cannot_be_recorded_rolls_every_bind_back(
    new_database: NewDatabase,
) -> None:
    """The log bind refuses the decision (here: it is read-only, so its database refuses the
    table and the INSERT): both binds were prepared, and both are rolled back."""
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    log = await new_database("postgresql")
    name = f"t{uuid.uuid4().hex[:12]}"
    db = AsyncBind(
        postgresql,
        binds={"users": mysql, "log": {"url": log, "read_only": True}},
        twophase_name=name,
        twophase_log="log",
    )
    items = db.Table("items", sa.Column("name", sa.String(50), primary_key=True))
    users = db.Table("users", sa.Column("name", sa.String(50), primary_key=True), bind_key="users")
    rolled_back: list[Any] = []
    for key in (None, "users"):
        sa.event.listen(
            db.engines[key].sync_engine,
            "rollback_twophase",
            lambda conn, xid, is_prepared: rolled_back.append(is_prepared),
        )
    try:
        await db.create_all()
        async with db.session(twophase=True) as session:
            await session.execute(sa.insert(items).values(name="a"))
            await session.execute(sa.insert(users).values(name="a"))
            with pytest.raises(asyncbind.ReadOnlyBindError) as caught:
                await session.commit()
            assert caught.value.key == "log"
            assert any(
                "could not be recorded on bind 'log', so every bind was rolled back" in note
                for note in caught.value.__notes__
            )
        assert rolled_back == [True, True]  # ROLLBACK PREPARED / XA ROLLBACK on both
        async with db.engine.connect() as conn:
            assert list(await conn.scalars(sa.select(items.c.name))) == []
        async with db.engines["users"].connect() as conn:
            assert list(await conn.scalars(sa.select(users.c.name))) == []
        assert await prepared(name) == NOTHING
    finally:
        await db.dispose()
        await roll_back_leftovers(name)


async def test_a_bind_lost_after_the_decision_is_committed_by_recover(tp: TwoPhaseBinds) -> None:
    """MariaDB's connection is killed just before its XA COMMIT: the PostgreSQL part has
    committed, the decision stands, and recover() commits the MariaDB part."""
    thread: list[int] = []
    kill_before_commit = killed_before_commit("mysql", thread)

    sa.event.listen(tp.db.engines["users"].sync_engine, "commit_twophase", kill_before_commit)
    async with tp.db.session(twophase=True) as session:
        await session.execute(sa.insert(tp.items).values(name="a"))
        conn = await session.connection(bind_arguments={"bind_key": "users"})
        thread.append((await conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar_one())
        await session.execute(sa.insert(tp.users).values(name="a"))
        with pytest.raises(TwoPhaseInDoubtError) as caught:
            await session.commit()
        error = caught.value
        assert (error.decided, error.committed, error.in_doubt) == (True, (None,), ("users",))
        assert "The decision to commit was recorded, so the commit stands" in str(error)
        assert "'await db.recover()'" in str(error)
        await session.execute(sa.select(tp.items))  # the session is usable again
    sa.event.remove(tp.db.engines["users"].sync_engine, "commit_twophase", kill_before_commit)
    assert await names(tp) == (["a"], [])
    in_doubt = await prepared(tp.name)
    assert await tp.db.recover() == [Resolution("users", in_doubt["mysql"][0], True)]
    assert await names(tp) == (["a"], ["a"])
    assert await decisions(tp) == []


async def test_a_postgresql_server_without_prepared_transactions_is_named(
    new_database: NewDatabase,
) -> None:
    """A private server keeps PostgreSQL's default, max_prepared_transactions = 0."""
    from privateservers import PostgreSQLServer

    mysql = await new_database("mysql")
    async with PostgreSQLServer(25710) as server:
        name = f"t{uuid.uuid4().hex[:12]}"
        db = AsyncBind(server.url(), binds={"users": mysql}, twophase_name=name)
        items = db.Table("items", sa.Column("name", sa.String(50), primary_key=True))
        users = db.Table(
            "users", sa.Column("name", sa.String(50), primary_key=True), bind_key="users"
        )
        try:
            await db.create_all()
            async with db.session(twophase=True) as session:
                await session.execute(sa.insert(items).values(name="a"))
                await session.execute(sa.insert(users).values(name="a"))
                with pytest.raises(
                    sa_exc.DBAPIError, match="prepared transactions are disabled"
                ) as caught:
                    await session.commit()
                assert any(
                    "ALTER SYSTEM SET max_prepared_transactions = 64" in note
                    for note in caught.value.__notes__
                )
            async with db.session() as session:
                assert await session.scalar(sa.select(sa.func.count()).select_from(items)) == 0
                assert await session.scalar(sa.select(sa.func.count()).select_from(users)) == 0
            assert (await prepared(name))["mysql"] == []
        finally:
            await db.dispose()
            await roll_back_leftovers(name)


def test_the_errors_keep_their_facts_through_pickling() -> None:
    import pickle

    cause = ConnectionResetError(104, "Connection reset by peer")
    for error in (
        TwoPhaseUnsupportedError("cache", "sqlite"),
        TwoPhaseUnsupportedError("tenant", "postgresql", "t1"),
        TwoPhaseTakenOverError([None, "users"]),
        TwoPhasePrepareError(),
        TwoPhaseInDoubtError(True, [None], ["users"], cause),
        TwoPhaseInDoubtError(None, [], [None, "users"], cause),
        TwoPhaseInDoubtError(False, [], ["users"], cause),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert {k: v for k, v in vars(again).items() if k != "cause"} == {
            k: v for k, v in vars(error).items() if k != "cause"
        }
